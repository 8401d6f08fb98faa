"""The last line of defence for decoding untrusted files: a child process with CPU-time and
memory limits, so that no file the structure checks do not understand can cost the instance
more than one bounded decode.

Each call runs ``work(data, *args)`` in its own child forked from a ``forkserver`` process: the
server is started by fork+exec (the serving process, which may hold a CUDA context, never
forks a copy of itself) and has imported the decoders once, so a child starts in a few
milliseconds. The child sets ``RLIMIT_CPU`` (the kernel kills it with SIGXCPU past the limit),
``RLIMIT_AS`` (allocations past the limit fail with ``MemoryError``; counted from the address
space it starts with) and no core files, and the
parent also kills it past a wall-clock limit. A child per call, not a shared pool: a file that
kills its decoder fails only its own job. At most ``MAX_CONCURRENT`` children run at once, so
the admitted jobs' decodes together stay within ``MAX_CONCURRENT * MEMORY_BYTES``.

Outcomes for the caller: the work's result, its ``PermanentError`` (re-raised as an
``InvalidImageError`` with the same message), or an ``InvalidImageError`` saying which limit
the file broke.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inpaint.errors import InvalidImageError, PermanentError

log = logging.getLogger(__name__)

#: CPU seconds one decode may use. The worst honest file measured (a 49 MP progressive JPEG)
#: needs about a fifth of this on the 2-core development machine (docs/reliability.md).
CPU_SECONDS = 10
#: Address space one decoding child may map beyond what it inherits from the fork server. A
#: 49 MP RGBA PNG, the largest honest decode, peaks at 0.83 GB resident.
MEMORY_BYTES = 2 * 1024**3
#: Wall-clock seconds before the parent kills a child (CPU time is what the file controls;
#: this only bounds a child starved by a busy machine or blocked).
WALL_SECONDS = 60
#: Children at once in this process: with four jobs admitted per instance, decodes wait for a
#: slot rather than add up (2 x 2 GiB at most, beside the model).
MAX_CONCURRENT = 2
#: Modules the fork server imports once, so that each child starts with them loaded (this one
#: imports the decoders and warms them up).
PRELOAD = ["inpaint.photo.decode_preload"]
#: Each child runs the program's main script again (as ``__mp_main__``, behind its ``__main__``
#: guard): CPython 3.11's fork server ignores a ``__main__`` preload. The servers' scripts only
#: import their entry module, so the fork server imports it too when this process has.
SERVER_ENTRY_MODULES = ("gunicorn.app.wsgiapp", "functions_framework._cli")

_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)
_CONTEXT_LOCK = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None
_last_peak = threading.local()


@dataclass(frozen=True)
class Limits:
    """One child's limits."""

    cpu_seconds: int
    memory_bytes: int
    wall_seconds: float


def _get_context() -> multiprocessing.context.BaseContext:
    global _context
    with _CONTEXT_LOCK:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            entries = [name for name in SERVER_ENTRY_MODULES if name in sys.modules]
            ctx.set_forkserver_preload([*entries, *PRELOAD])
            _context = ctx
        return _context


def last_peak_bytes() -> int:
    """Peak resident memory of this thread's last child (0 before any): for the benchmark."""
    return getattr(_last_peak, "value", 0)


def run(
    work: Callable[..., tuple[Any, bytes]],
    data: bytes,
    *args: Any,
    what: str,
    limits: Limits | None = None,
) -> tuple[Any, bytes]:
    """``work(data, *args)`` in a limited child: its ``(metadata, payload)`` or an error.

    ``work`` must be a module-level function (the child imports it by name) returning small
    picklable metadata and the large result as bytes (sent without a pickled copy). ``limits``
    default to the module's constants as they are at the call.
    """
    limits = limits or Limits(CPU_SECONDS, MEMORY_BYTES, WALL_SECONDS)
    ctx = _get_context()
    with _SLOTS:
        receiver, sender = ctx.Pipe(duplex=False)
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_child, args=(reader, sender, work, args, limits), name=f"decode-{what}"
        )
        child.start()
        sender.close()
        reader.close()
        feeder = threading.Thread(target=_feed, args=(writer, data), name="decode-feed")
        feeder.start()
        try:
            outcome, payload = _receive(receiver, child, limits)
        finally:
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join()
            feeder.join()
    return _result(outcome, payload, child.exitcode, what, limits)


def _feed(writer: multiprocessing.connection.Connection, data: bytes) -> None:
    """Writes the input to the child from a thread: a child that dies before reading it all
    must not leave the parent blocked on a full pipe."""
    try:
        writer.send_bytes(data)
    except OSError:  # BrokenPipeError: the child is gone; its exit code tells why
        pass
    finally:
        writer.close()


def _receive(
    receiver: multiprocessing.connection.Connection, child: Any, limits: Limits
) -> tuple[Any, bytes]:
    """The child's outcome and payload; (None, b"") if it died, ("wall", b"") if too slow."""
    if not receiver.poll(limits.wall_seconds):
        return ("wall" if child.is_alive() else None), b""
    try:
        outcome = pickle.loads(receiver.recv_bytes())
        payload = receiver.recv_bytes() if outcome[0] == "ok" else b""
    except (EOFError, OSError):
        return None, b""
    return outcome, payload


def _result(
    outcome: Any, payload: bytes, exitcode: int | None, what: str, limits: Limits
) -> tuple[Any, bytes]:
    """The work's result, or the permanent error that says which limit the file broke."""
    if isinstance(outcome, tuple) and outcome[0] == "ok":
        _last_peak.value = outcome[2]
        return outcome[1], payload
    if isinstance(outcome, tuple) and outcome[0] == "refused":
        _last_peak.value = outcome[2]
        raise InvalidImageError(outcome[1])
    mib = limits.memory_bytes // (1024 * 1024)
    if isinstance(outcome, tuple) and outcome[0] == "memory":
        raise InvalidImageError(
            f"The {what} could not be read: decoding it needs more than {mib} MB of memory."
        )
    if outcome == "wall":
        raise InvalidImageError(
            f"The {what} could not be read: decoding it took longer than "
            f"{limits.wall_seconds:.0f} seconds."
        )
    if exitcode == -signal.SIGXCPU:
        raise InvalidImageError(
            f"The {what} could not be read: decoding it needs more than "
            f"{limits.cpu_seconds} seconds of processing."
        )
    log.warning("decoding child for the %s ended with exit code %s", what, exitcode)
    raise InvalidImageError(
        f"The {what} could not be read: its decoder stopped (exit code {exitcode}); the file "
        "is corrupt or too demanding."
    )


def _address_space() -> int:
    """This process's mapped address space now (what it inherited from the fork server).

    The limit is set on top of it: the server's mappings (libraries, and per-thread buffers
    that numerical libraries reserve by core count) grow with the machine, not with the file.
    """
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _child(
    reader: multiprocessing.connection.Connection,
    sender: multiprocessing.connection.Connection,
    work: Callable[..., tuple[Any, bytes]],
    args: tuple[Any, ...],
    limits: Limits,
) -> None:
    """In the child: limits first, then the work; the outcome goes back, then the payload."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    allowed = _address_space() + limits.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (allowed, allowed))
    payload = b""
    try:
        meta, payload = work(reader.recv_bytes(), *args)
        outcome: tuple[Any, ...] = ("ok", meta)
    except MemoryError:
        outcome = ("memory",)
    except PermanentError as e:
        outcome = ("refused", e.message)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sender.send_bytes(pickle.dumps((*outcome, peak)))
    if outcome[0] == "ok":
        sender.send_bytes(payload)
    sender.close()
    os._exit(0)
