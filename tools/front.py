"""A push endpoint standing where Cloud Run's front end stands, for tests and benchmarks.

Pub/Sub pushes to ``CloudRunFront.url``; the front forwards each push to the current instance
(``target``) and records, per Pub/Sub message, every answer the subscription got. Like Cloud
Run it answers 503 while no instance is up (the endpoint's port never closes, so no push hangs
in the backlog of a listener that is going away), and 503 when the instance's connection dies
mid-request (a crashed instance). With ``slots`` it also admits at most that many requests at
once (Cloud Run's ``--concurrency`` on the last allowed instance): a push waits up to
``pending_s`` for a free slot (Cloud Run holds it about 10 s), then is answered 429.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


@dataclass(frozen=True)
class Answer:
    """One push and how it was answered; ``at`` and ``took`` in seconds (monotonic clock)."""

    message_id: str | None
    status: int
    at: float
    took: float
    by: str | None  # the instance that answered, None for the front's own 503/429


class CloudRunFront:
    """HTTP endpoint that forwards Pub/Sub pushes to ``target`` and records the answers."""

    def __init__(self, *, slots: int | None = None, pending_s: float = 10.0) -> None:
        self.target: str | None = None
        self.pending_s = pending_s
        self._slots = threading.BoundedSemaphore(slots) if slots else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.answers: list[Answer] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                code, answer = front.forward(dict(self.headers), body)
                self.send_response(code)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True, name="front").start()

    def forward(self, headers: dict, body: bytes) -> tuple[int, bytes]:
        """Admit (or 429), forward to the instance (or 503), record the answer."""
        t0 = time.monotonic()
        message_id = _message_id(body)
        if self._slots is not None and not self._slots.acquire(timeout=self.pending_s):
            return self._record(message_id, 429, t0, None), b"Too Many Requests"
        try:
            target = self.target
            if target is None:
                return self._record(message_id, 503, t0, None), b"no instance"
            try:
                response = requests.post(target, headers=headers, data=body, timeout=600)
                code, content = response.status_code, response.content
            except requests.RequestException:
                code, content = 503, b"the instance's connection died"
            return self._record(message_id, code, t0, target), content
        finally:
            if self._slots is not None:
                self._slots.release()

    def _record(self, message_id: str | None, code: int, t0: float, by: str | None) -> int:
        now = time.monotonic()
        with self._changed:
            self.answers.append(Answer(message_id, code, now, now - t0, by))
            self._changed.notify_all()
        return code

    def answers_for(self, message_id: str) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.message_id == message_id]

    def wait_for(self, predicate, timeout: float) -> None:
        """Waits until ``predicate(answers)`` holds (checked on every new answer)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self.answers)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the pushes did not get there within {timeout} s")
                self._changed.wait(min(left, 1.0))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CloudRunFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message_id(body: bytes) -> str | None:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(body)["message"]["messageId"])
    return None
