"""A container engine that answers: the one already running, or Debian's ``dockerd`` started here.

Split from ``tools.image`` (which builds the image) because the container tests and benchmarks
need the engine alone. As root it installs Debian's ``docker.io``, ``debootstrap`` and
``iptables`` when missing, starts ``dockerd`` with its own data root, socket and exec root when
no engine answers (no bridge, no iptables rules, no IP forwarding: build and run use the host
network), and stops only a daemon it started, by its PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
APT_PACKAGES = ("docker.io", "debootstrap", "iptables")
# Outside the clone, so every clone on a machine reuses the engine's base image and layer cache
# (a fresh clone's first `make test` then builds only what changed).
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DATA_ROOT = Path(os.environ.get("INPAINT_DOCKER_ROOT") or CACHE_HOME / "pawfect-edit" / "docker")


class ImageError(RuntimeError):
    """Something the image tooling cannot do; the message says what to install or check."""


def log(message: str) -> None:
    """One progress line on stderr (the tooling's output, not the build log)."""
    sys.stderr.write(f"[image] {message}\n")
    sys.stderr.flush()


# --- the engine -------------------------------------------------------------------------------


def ensure_packages() -> None:
    """Installs Debian's container engine and debootstrap when missing (root only)."""
    missing = [p for p in (DOCKER, DOCKERD, DEBOOTSTRAP) if not p.exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(
            f"missing {', '.join(map(str, missing))}: as root, apt-get install -y "
            f"--no-install-recommends {' '.join(APT_PACKAGES)}"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' '.join(APT_PACKAGES)} (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@dataclass
class Engine:
    """A Docker engine that answers: the one at DOCKER_HOST / the default socket, or a dockerd
    started here (and stopped by ``stop``, which leaves any other daemon alone)."""

    data_root: Path = DATA_ROOT
    host: str = ""
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def started_here(self) -> bool:
        return self._proc is not None

    def env(self) -> dict[str, str]:
        env = os.environ | {"DOCKER_BUILDKIT": "1"}
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def answers(self) -> bool:
        try:
            proc = subprocess.run(
                [str(DOCKER), "version", "--format", "{{.Server.Version}}"],
                env=self.env(),
                capture_output=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def start(self, timeout_s: float = 120) -> Engine:
        ensure_packages()
        if self.answers():
            return self
        self.data_root = self.data_root.resolve()
        self.data_root.mkdir(parents=True, exist_ok=True)
        # Short paths: a unix socket path may not exceed 107 bytes, and containerd puts its own
        # sockets under the exec root.
        key = hashlib.sha1(str(self.data_root).encode()).hexdigest()[:10]
        run_dir = Path(f"/run/inpaint-docker-{key}")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.host = f"unix://{run_dir}/docker.sock"
        if self.answers():  # started by an earlier command with the same data root
            return self
        self.log_path = self.data_root.parent / "dockerd.log"
        argv = [
            str(DOCKERD),
            f"--data-root={self.data_root}",
            f"--exec-root={run_dir}/exec",
            f"--pidfile={run_dir}/docker.pid",
            f"--host={self.host}",
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--ip-forward=false",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise ImageError(f"dockerd did not start ({argv}):\n{tail}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        """Stops the daemon if this object started it (SIGTERM to its PID, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``/usr/bin/docker ARGS`` against this engine, output captured as text."""
        proc = subprocess.run(
            [str(DOCKER), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and proc.returncode != 0:
            raise ImageError(f"docker {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0


@contextlib.contextmanager
def running_engine(data_root: Path = DATA_ROOT) -> Iterator[Engine]:
    """An engine for the block: started (and afterwards stopped) here unless one answers."""
    engine = Engine(data_root=data_root)
    with engine:
        yield engine
