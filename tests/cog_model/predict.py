"""A stand-in for lucataco/animate-diff: the same inputs, logs like its, the sample MP4 out.

The real Cog server from PyPI runs it in the tests (`COG_PREDICT_TYPE_STUB=predict.py:Predictor`).
`COG_TEST_SECONDS` sets how long one prediction takes (the two progress bars share it),
`COG_TEST_SAMPLE` which file it returns (the sample MP4 beside the tests by default),
`COG_TEST_OUTPUT` the folder of the one copy it returns (a temporary one by default), and
`COG_TEST_SPANS` a file to which each prediction appends its start and end (for bench/);
`COG_TEST_FAIL_SETUP` makes setup fail, as a server without its weights would.
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cog import BaseRunner, Input
from cog import Path as CogPath

CHECKPOINTS: list[str | int] = [
    "toonyou_beta3.safetensors",
    "lyriel_v16.safetensors",
    "rcnzCartoon3d_v10.safetensors",
    "majicmixRealistic_v5Preview.safetensors",
    "realisticVisionV40_v20Novae.safetensors",
]
MOTION_MODULES: list[str | int] = ["mm_sd_v14", "mm_sd_v15", "mm_sd_v15_v2"]
FRAMES = 16
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "animatediff-sample.mp4"


def _bar(done: int, total: int) -> str:
    """One tqdm line, as the model prints them."""
    percent = int(100 * done / total)
    filled = "#" * (10 * done // total)
    return f"{percent:3d}%|{filled:<10}| {done}/{total} [00:00<00:00, 9.99it/s]"


class Predictor(BaseRunner):
    """Takes animate-diff's inputs; prints its seed and two bars; returns the sample MP4."""

    def setup(self, weights: object = None) -> None:
        """Nothing to load: the sample is copied once, where each prediction returns it."""
        if os.environ.get("COG_TEST_FAIL_SETUP"):
            raise RuntimeError("the model's weights are missing")
        self.seconds = float(os.environ.get("COG_TEST_SECONDS", "0.3"))
        self.sample = Path(os.environ.get("COG_TEST_SAMPLE", str(SAMPLE)))
        # One copy per server, not per prediction: the server reads it for the data: URI or
        # the upload, and the copy is made again should the server delete it after.
        folder = Path(os.environ.get("COG_TEST_OUTPUT") or tempfile.mkdtemp())
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "out.mp4"

    def run(
        self,
        prompt: str = Input(default="masterpiece, best quality, 1girl, solo"),
        n_prompt: str = Input(default=""),
        path: str = Input(default="toonyou_beta3.safetensors", choices=CHECKPOINTS),
        motion_module: str = Input(default="mm_sd_v14", choices=MOTION_MODULES),
        steps: int = Input(default=25, ge=1, le=100),
        guidance_scale: float = Input(default=7.5, ge=1, le=10),
        seed: int = Input(default=-1),
    ) -> CogPath:
        """Print the seed and the sampling and frame bars over the configured time."""
        began = time.time()
        print(f"Using seed: {seed}")
        sys.stdout.flush()
        ticks = steps + FRAMES
        pause = self.seconds / ticks
        for total in (steps, FRAMES):
            for done in range(1, total + 1):
                time.sleep(pause)
                print(_bar(done, total), file=sys.stderr)
                sys.stderr.flush()
        if not self.out.exists():
            shutil.copyfile(self.sample, self.out)
        spans = os.environ.get("COG_TEST_SPANS")
        if spans:
            with open(spans, "a") as file:
                file.write(f"{began} {time.time()}\n")
        return CogPath(self.out)
