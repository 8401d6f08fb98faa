"""Fixtures of the container tests: a real Docker engine (started by tools/image.py when none
answers), the production image built from the repository's Dockerfile with the tiny weights and
a marker secret (in the background: tests/container/plugin.py), the local stack, and containers
started from the image on the host network.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests

from tests.container.plugin import TAG, Built
from tests.e2e.conftest import Sessions
from tools.engine import Engine
from tools.server import FAST_SETTINGS
from tools.stack import free_port


@pytest.fixture(scope="session")
def image(pytestconfig) -> Built:
    """The image, tiny weights, built with a fresh marker value as the hf_token secret (by
    ``tests/container/plugin.py``, in the background since collection)."""
    built = pytestconfig.pluginmanager.get_plugin("inpaint-image-build").built()
    print(f"\nimage built in {built.result.seconds:.1f} s")
    return built


@pytest.fixture(scope="module")
def sessions(stack) -> Sessions:
    from firebase_admin import firestore, storage

    app = stack.firebase_app("container-tests")
    return Sessions(firestore.client(app), storage.bucket(app=app))


@dataclass
class Container:
    """One ``docker run -d`` of the image on the host network, serving on ``port``."""

    engine: Engine
    name: str
    port: int
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=5)

    def state(self) -> dict:
        out = self.engine.docker("inspect", "--format", "{{json .State}}", self.name)
        return json.loads(out.stdout)

    def log_text(self) -> str:
        proc = self.engine.docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, timeout: float = 180) -> list[tuple[int, int]]:
        """Polls /health and /ready until /ready is 200; returns the (health, ready) pairs."""
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                raise RuntimeError(f"container exited:\n{self.log_text()[-4000:]}")
            try:
                ready = self.get("/ready").status_code
                seen.append((self.get("/health").status_code, ready))
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or the worker is still importing the app: the master has
                # bound the port and queues the connection meanwhile.
                time.sleep(0.1)
                continue
            if ready == 200:
                return seen
            if seen[-1][0] != 200:
                raise RuntimeError(f"/health {seen[-1][0]}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"not ready after {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, grace_s: int = 10) -> subprocess.CompletedProcess[str]:
        return self.engine.docker("stop", "--time", str(grace_s), self.name, timeout=60)


@pytest.fixture(scope="module")
def run_container(image, stack) -> Iterator[Callable[..., Container]]:
    """Starts containers the way Cloud Run runs the image (read-only root filesystem, tmpfs
    /tmp, $PORT), pointed at the local stack; all are removed at the end of the module."""
    started: list[Container] = []

    def run(**env: str | None) -> Container:
        """``env`` adds or overrides variables; a None value leaves the image's own."""
        port = free_port()
        name = f"inpaint-test-{uuid.uuid4().hex[:8]}"
        # The image's own INPAINT_QUANT (the quantization its weights were built with) stays.
        fast = {k: v for k, v in FAST_SETTINGS.items() if k != "INPAINT_QUANT"}
        # The image requires a GPU (INPAINT_DEVICE=cuda); these containers have none.
        settings = stack.env | fast | {"PORT": str(port), "INPAINT_DEVICE": "cpu"} | env
        argv = ["run", "--detach", "--name", name, "--network", "host", "--read-only"]
        argv += ["--tmpfs", "/tmp:rw,nosuid,nodev,size=512m"]
        for key, value in settings.items():
            if value is not None:
                argv += ["--env", f"{key}={value}"]
        image.engine.docker(*argv, TAG)
        container = Container(image.engine, name, port)
        started.append(container)
        return container

    yield run
    for container in started:
        image.engine.docker("rm", "--force", container.name, check=False)


def run_in_image(built: Built, *command: str, network: str = "none") -> str:
    """Runs a one-off command in the image (root filesystem read-only) and returns stdout."""
    proc = built.engine.docker(
        "run",
        "--rm",
        "--network",
        network,
        "--read-only",
        "--tmpfs",
        "/tmp",
        TAG,
        *command,
        timeout=300,
    )
    return proc.stdout
