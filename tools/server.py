"""A real server process started with the production serving command (``SERVE_ARGV``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from inpaint.serving import SERVE_ARGV
from tools.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The tiny model's cheap job (2 steps at 0.0625 MP) and short I/O timeouts, for tests and the
# local benchmarks.
FAST_SETTINGS = {
    "INPAINT_QUANT": "Q8_0",
    "INPAINT_STEPS": "2",
    "INPAINT_MAX_STEPS": "200",  # tests that act mid-job ask for long jobs (more on a GPU)
    "INPAINT_WARMUP_STEPS": "1",
    "INPAINT_WORK_MEGAPIXELS": "0.0625",
    "INPAINT_PROGRESS_INTERVAL_SECONDS": "0.2",
    "INPAINT_IO_TIMEOUT_SECONDS": "3",
    "INPAINT_IO_DEADLINE_SECONDS": "4",
    "INPAINT_READY_WAIT_SECONDS": "10",
    "INPAINT_MAX_QUEUED_JOBS": "8",  # tests post bursts of up to 8 jobs themselves
    "THREADS": "12",  # + 4 for probes and quickly refused copies, as in production
}


class ServerProcess:
    """gunicorn serving inpaint.serving.app:create_app() on a free loopback port, logs in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = list(argv or SERVE_ARGV)
        argv[0] = str(BIN / argv[0])
        self.argv = argv
        self.env = os.environ | env | {"HOST": "127.0.0.1", "PORT": str(self.port)}
        self.env["PATH"] = f"{BIN}:{self.env.get('PATH', '')}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening / still starting
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def post(self, headers: dict, body: bytes, path: str = "/", timeout: float = 600):
        return requests.post(self.url + path, headers=headers, data=body, timeout=timeout)

    def get(self, path: str, timeout: float = 5):
        return requests.get(self.url + path, timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (master and worker): a crash, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def log_records(server: ServerProcess) -> list[dict]:
    """The server's structured (JSON) log lines, parsed; other lines are skipped."""
    records = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def claims_by_session(server: ServerProcess) -> dict[str, int]:
    """How many times each session was claimed ("job claimed" log lines) by this server."""
    counts: dict[str, int] = {}
    for record in log_records(server):
        if record.get("message") == "job claimed":
            counts[record["sessionId"]] = counts.get(record["sessionId"], 0) + 1
    return counts
