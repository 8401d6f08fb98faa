"""The decode sandbox (``inpaint.photo.sandbox``): whatever the work does in its child, the caller
gets its result or a permanent error naming the limit, and the serving process is unharmed.

The child imports the work functions below by name, so they live at module level.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from PIL import Image

from benchmarks import hostile_inputs as hostile
from inpaint.errors import InvalidImageError
from inpaint.photo import decoding, sandbox
from inpaint.photo.mask import read_mask

SMALL = sandbox.Limits(cpu_seconds=1, memory_bytes=512 * 1024**2, wall_seconds=30)


def echo(data: bytes) -> tuple[dict, bytes]:
    return {"n": len(data)}, data[::-1]


def burn(_: bytes) -> tuple[dict, bytes]:
    while True:
        pass


def hoard(_: bytes) -> tuple[dict, bytes]:
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024**2))


def crash(_: bytes) -> tuple[dict, bytes]:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def refuse(_: bytes) -> tuple[dict, bytes]:
    raise InvalidImageError("The photo could not be read: a specific reason.")


def hang(_: bytes) -> tuple[dict, bytes]:
    signal.pause()  # blocks without using CPU: only the wall-clock limit ends it
    raise AssertionError("unreachable")


def test_result_and_large_payload_come_back() -> None:
    data = os.urandom(8 * 1024**2)
    meta, payload = sandbox.run(echo, data, what="photo", limits=SMALL)
    assert meta == {"n": len(data)} and payload == data[::-1]


@pytest.mark.parametrize(
    ("work", "fragment"),
    [
        (burn, "more than 1 seconds of processing"),
        (hoard, "more than 512 MB of memory"),
        (crash, "its decoder stopped"),
        (refuse, "a specific reason"),
    ],
    ids=["cpu", "memory", "crash", "permanent error"],
)
def test_every_way_a_child_fails_is_a_permanent_error(work: object, fragment: str) -> None:
    with pytest.raises(InvalidImageError) as info:
        sandbox.run(work, b"x", what="photo", limits=SMALL)
    assert info.value.message.startswith("The photo could not be read: ")
    assert fragment in info.value.message


def test_a_blocked_child_is_killed_at_the_wall_clock_limit() -> None:
    limits = sandbox.Limits(cpu_seconds=1, memory_bytes=512 * 1024**2, wall_seconds=0.2)
    with pytest.raises(InvalidImageError, match="took longer than 0 seconds"):
        sandbox.run(hang, b"x", what="mask", limits=limits)


def test_decoding_runs_in_the_limited_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 48 MP image (a 60 KB PNG) cannot be decoded within 256 MB: refused, not an OOM."""
    data = hostile.encode(Image.new("RGBA", (8000, 6000), (1, 2, 3, 4)))
    monkeypatch.setattr(sandbox, "MEMORY_BYTES", 256 * 1024**2)
    with pytest.raises(InvalidImageError, match="more than 256 MB of memory"):
        decoding.decode_photo(data, decoding.ImageLimits(40 * 1024**2, 50_000_000))


def test_isolated_and_in_process_decodes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    src = hostile.photo_array((96, 64))
    src.putalpha(Image.linear_gradient("L").resize((96, 64)))
    data = hostile.encode(src)
    limits = decoding.ImageLimits(40 * 1024**2, 50_000_000)
    isolated = decoding.decode_photo(data, limits)
    mask = read_mask(data, limits)
    monkeypatch.setattr(decoding, "ISOLATED", False)
    assert np.array_equal(np.asarray(isolated), np.asarray(decoding.decode_photo(data, limits)))
    assert np.array_equal(np.asarray(mask), np.asarray(read_mask(data, limits)))
    assert isolated.info == decoding.decode_photo(data, limits).info
