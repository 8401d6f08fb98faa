"""In-memory Firestore documents and Storage objects with the semantics the store relies on.

``MemoryDocuments``: each write gives the document a new version, the virtual clock's time
(strictly increasing, like Firestore's ``update_time``); an update at a stale version raises
``FailedPrecondition``, an update of a missing document ``NotFound``. ``MemoryBlobs``: each write
a new generation; ``if_generation_match`` (0: absent) on writes, reads and deletes. Both pass the
same contract tests as the real servers (``tests/e2e/test_store_backends.py``).

Faults: ``fail_next`` makes the next operation of a kind fail before it applies (the request was
lost) or after (the reply was lost: the write landed and the caller cannot know).
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

from inpaint.session.store import BlobInfo, Fields


@dataclass
class Faults:
    """Pending injected failures: operation name -> list of "before" / "after"."""

    pending: dict[str, list[str]] = field(default_factory=dict)
    injected: int = 0

    def fail_next(self, operation: str, when: str) -> None:
        self.pending.setdefault(operation, []).append(when)

    def take(self, operation: str) -> str | None:
        queue = self.pending.get(operation)
        if queue:
            self.injected += 1
            return queue.pop(0)
        return None


class MemoryDocuments:
    """``inpaint.session.store.Documents`` in memory; ``clock`` gives the versions."""

    def __init__(self, clock: Callable[[], dt.datetime], faults: Faults | None = None) -> None:
        self._clock = clock
        self._docs: dict[str, tuple[Fields, dt.datetime]] = {}
        self._last = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.faults = faults or Faults()
        self.writes = 0
        # Each write is atomic, as Firestore's precondition check is: the in-process tests run
        # a job's heartbeat thread beside the test's own writes (the simulation is one thread).
        self._lock = threading.RLock()

    def _version(self) -> dt.datetime:
        now = self._clock()
        self._last = max(now, self._last + dt.timedelta(microseconds=1))
        return self._last

    def get(self, path: str) -> tuple[Fields | None, Any]:
        self._maybe_fail("get", "before")
        doc = self._docs.get(path)
        return (copy.deepcopy(doc[0]), doc[1]) if doc else (None, None)

    def update(self, path: str, fields: Fields, version: Any) -> None:
        fault = self.faults.take("update")
        if fault == "before":
            raise gexc.ServiceUnavailable("injected: the update was lost")
        with self._lock:
            current = self._docs.get(path)
            if current is None:
                raise gexc.NotFound(f"no document {path}")
            if version != current[1]:
                raise gexc.FailedPrecondition(f"{path} was written meanwhile")
            self._docs[path] = (current[0] | copy.deepcopy(fields), self._version())
            self.writes += 1
        if fault == "after":
            raise gexc.DeadlineExceeded("injected: the update's reply was lost")

    # The app's and the test's own writes (no preconditions: the client SDK's plain writes).
    def set(self, path: str, fields: Fields) -> None:
        with self._lock:
            self._docs[path] = (copy.deepcopy(fields), self._version())

    def patch(self, path: str, fields: Fields) -> bool:
        """An unconditional update (False: no such document)."""
        with self._lock:
            if path not in self._docs:
                return False
            self.set(path, self._docs[path][0] | fields)
            return True

    def delete(self, path: str) -> None:
        self._docs.pop(path, None)

    def peek(self, path: str) -> Fields | None:
        doc = self._docs.get(path)
        return doc[0] if doc else None

    def paths(self) -> list[str]:
        return sorted(self._docs)

    def _maybe_fail(self, operation: str, when: str) -> None:
        if self.faults.take(operation) is not None:
            raise gexc.ServiceUnavailable(f"injected: {operation} failed")


@dataclass
class Stored:
    data: bytes
    generation: int


class MemoryBlobs:
    """``inpaint.session.store.Blobs`` in memory, with generations."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._objects: dict[str, Stored] = {}
        self._generation = 1_000
        self.faults = faults or Faults()
        self._lock = threading.RLock()  # each write atomic, as Cloud Storage's precondition is

    def stat(self, path: str) -> BlobInfo | None:
        stored = self._objects.get(path)
        return BlobInfo(stored.generation, len(stored.data)) if stored else None

    def read(self, path: str, generation: int) -> bytes:
        stored = self._objects.get(path)
        if stored is None:
            raise gexc.NotFound(path)
        if stored.generation != generation:
            raise gexc.PreconditionFailed(f"{path} is at another generation")
        return stored.data

    def write(self, path: str, data: bytes, if_generation_match: int) -> int:
        fault = self.faults.take("write")
        if fault == "before":
            raise gexc.ServiceUnavailable("injected: the upload was lost")
        with self._lock:
            stored = self._objects.get(path)
            current = stored.generation if stored else 0
            if current != if_generation_match:
                raise gexc.PreconditionFailed(f"{path} is at generation {current}")
            self._generation += 1
            self._objects[path] = Stored(data, self._generation)
            generation = self._generation
        if fault == "after":
            raise gexc.ServiceUnavailable("injected: the upload's reply was lost")
        return generation

    def delete(self, path: str, if_generation_match: int | None) -> None:
        with self._lock:
            stored = self._objects.get(path)
            if stored is None:
                raise gexc.NotFound(path)
            if if_generation_match is not None and stored.generation != if_generation_match:
                raise gexc.PreconditionFailed(f"{path} is at another generation")
            del self._objects[path]

    # The app's own uploads and deletes, and the checks.
    def put(self, path: str, data: bytes) -> int:
        with self._lock:
            self._generation += 1
            self._objects[path] = Stored(data, self._generation)
            return self._generation

    def remove_prefix(self, prefix: str) -> None:
        for path in [p for p in self._objects if p.startswith(prefix)]:
            del self._objects[path]

    def listing(self, prefix: str) -> dict[str, bytes]:
        return {p: s.data for p, s in self._objects.items() if p.startswith(prefix)}
