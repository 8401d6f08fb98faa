"""A TCP proxy with an on/off switch: outages that keep the port and the data."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from tools.stack.servers import HOST, StackError

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
        for sock in self._forget(pipe):
            self._reset(sock)

    def _finish(self, pipe: _Pipe) -> None:
        """Both directions ended cleanly: close without RST."""
        for sock in self._forget(pipe):
            with contextlib.suppress(OSError):
                sock.close()

    def _forget(self, pipe: _Pipe) -> tuple[socket.socket, socket.socket]:
        """Stops watching ``pipe``'s two sockets and returns them for closing."""
        self._droppers.pop(id(pipe), None)
        for sock in (pipe.client, pipe.upstream):
            if self._masks.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
            self._pipes.pop(sock, None)
        return pipe.client, pipe.upstream

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
