"""Real Cog servers (PyPI `cog`, Replicate's coglet) running the stand-in model of tests/cog_model.

Each is `python -m cog.server.http` in its own process group (coglet starts a worker of its
own), on a free port of 127.0.0.1, with the venv's `bin` first on PATH so the worker finds
`coglet`. Managed synchronously, so that module-scoped fixtures can share them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

COG_MODEL = Path(__file__).resolve().parent / "cog_model"
BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parent / "data" / "animatediff-sample.mp4"


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def foreign_model(folder: Path) -> Path:
    """A copy of the stand-in model whose schema takes other inputs (another model)."""
    (folder / ".cog").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(COG_MODEL / "predict.py", folder / "predict.py")
    schema = json.loads((COG_MODEL / ".cog" / "openapi_schema.json").read_text())
    properties = schema["components"]["schemas"]["Input"]["properties"]
    for name in ("n_prompt", "motion_module"):
        del properties[name]
    (folder / ".cog" / "openapi_schema.json").write_text(json.dumps(schema))
    return folder


class CogServerProcess:
    """One real Cog server; `seconds` is how long each prediction of the stand-in takes."""

    def __init__(
        self,
        *,
        seconds: float = 0.3,
        upload_url: str | None = None,
        model: Path = COG_MODEL,
        log_dir: Path | None = None,
        spans: Path | None = None,
        fail_setup: bool = False,
    ) -> None:
        self.port = free_port()
        self.seconds = seconds
        self.upload_url = upload_url
        self.model = model
        self.log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"cog-{self.port}.log"
        self.spans = spans  # where each prediction notes when it ran (bench/)
        self.fail_setup = fail_setup
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (not waiting for setup)."""
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PORT": str(self.port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "COG_TEST_SECONDS": str(self.seconds),
            "COG_TEST_SAMPLE": str(SAMPLE),
            "COG_TEST_OUTPUT": str(self.log_path.with_suffix("")),  # a folder beside its log
        }
        if self.spans is not None:
            env["COG_TEST_SPANS"] = str(self.spans)
        if self.fail_setup:
            env["COG_TEST_FAIL_SETUP"] = "1"
        command = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
        if self.upload_url is not None:
            command += ["--upload-url", self.upload_url]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.model,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its worker goes down with it
            )

    def health(self) -> dict[str, object] | None:
        """Its health check, or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/health-check", timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 60, status: str = "READY") -> None:
        """Block until the server reports `status` (READY: idle and set up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health is not None and health.get("status") == status:
                return
            assert self.process is not None and self.process.poll() is None, self.log()
            time.sleep(0.05)
        raise TimeoutError(f"the Cog server on {self.port} did not get ready:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server and its worker, as a power cut would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server and its worker."""
        self._signal(signal.SIGTERM)

    def restart(self) -> None:
        """Kill it and start it again on the same port (it forgets every prediction)."""
        self.kill()
        self.start()
        self.wait_ready()

    def log(self) -> str:
        """What the server printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, sig: signal.Signals) -> None:
        """Signal the process group and wait for the server to end."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.process = None


def start_all(servers: list[CogServerProcess]) -> list[CogServerProcess]:
    """Start several servers at once and wait until every one is ready."""
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready()
    return servers
