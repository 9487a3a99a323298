"""Output files that always fit: probe, re-encode to an upload limit, GIF conversion, names."""

from bot.media.ffmpeg import MediaError, VideoInfo, probe, to_gif, to_mp4
from bot.media.fitting import (
    DEFAULT_UPLOAD_LIMIT,
    SLUG_MAX,
    Upload,
    fit_to_limit,
    output_filename,
    prepare_upload,
    upload_limit,
)

__all__ = [
    "DEFAULT_UPLOAD_LIMIT",
    "SLUG_MAX",
    "MediaError",
    "Upload",
    "VideoInfo",
    "fit_to_limit",
    "output_filename",
    "prepare_upload",
    "probe",
    "to_gif",
    "to_mp4",
    "upload_limit",
]
