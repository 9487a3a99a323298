"""`python -m bot.app.healthcheck`: exit 0 if the running bot's /healthz says 200, else 1.

For the container's HEALTHCHECK: Python's standard library only (no curl in the image), and
nothing of the bot imported, so a check costs a few milliseconds of start-up.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# Longer than the bot gives its own checks (5 s, bot.observability.health.PROBE_TIMEOUT), so a
# slow check is reported by the bot, and shorter than the Dockerfile's HEALTHCHECK --timeout.
TIMEOUT_SECONDS = 8.0


def main() -> int:
    """Ask /healthz on this machine; print its reason when unwell."""
    port = os.environ.get("METRICS_LISTEN_PORT", "").strip()
    if not port:
        print("METRICS_LISTEN_PORT is not set: no /healthz to ask", file=sys.stderr)
        return 1
    host = os.environ.get("METRICS_LISTEN_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask this machine
        host = "127.0.0.1"
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"unhealthy ({exc.code}): {exc.read(500).decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"no answer from {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
