"""Fuzzing what users control (issue 30): photos, masks, EXIF, event envelopes and document
fields, built and mutated by Hypothesis. Only the documented outcomes are accepted:

- an image: decoded to the exact picture (RGB photo, binary mask of the photo's size), or
  refused with a permanent error naming the input, by the structure checks or the decoders:
  never by the sandbox's last line of defence (a CPU, memory or crash refusal would mean a
  file got past the cheap checks and cost a full decode budget);
- an event: a ``JobRequest`` with valid IDs, ``Ignored`` or ``InvalidEventError``;
- document fields: ``GenerationParams`` within the limits, or ``InvalidRequestError``.

The default profile runs in about a minute here; ``INPAINT_FUZZ=long`` runs about 25 times as
many cases (the campaign reported in docs/reliability.md). No example database is written.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import struct
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from cloudevents.http import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks import hostile_inputs as hostile
from inpaint.config import Settings
from inpaint.errors import (
    InvalidEventError,
    InvalidRequestError,
    MaskMismatchError,
    PermanentError,
)
from inpaint.model.params import GenerationParams
from inpaint.photo import decoding, sandbox
from inpaint.photo.mask import decode_mask
from inpaint.session.events import (
    FIRESTORE_PREFIX,
    PUBSUB_TYPE,
    Ignored,
    JobRequest,
    parse_event,
    validate_id,
)
from inpaint.session.jobs import MAX_SEED, job_params

LIMITS = decoding.ImageLimits(max_bytes=40 * 1024 * 1024, max_pixels=50_000_000)
SETTINGS = Settings(default_prompt="default prompt", steps=28, max_steps=50, guidance=30.0)
#: Messages of the sandbox's own refusals: a fuzz case that needs them got past the checks.
LAST_LINE = ("seconds of processing", "MB of memory", "decoder stopped", "took longer than")

_LONG = os.environ.get("INPAINT_FUZZ") == "long"
_COMMON = {
    "deadline": None,
    "database": None,
    "derandomize": not _LONG,  # the suite's runs are reproducible; long runs explore
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
IMAGES = settings(max_examples=8000 if _LONG else 1200, **_COMMON)
MASKS = settings(max_examples=3000 if _LONG else 400, **_COMMON)
FAST = settings(max_examples=20000 if _LONG else 1500, **_COMMON)
#: Where to write the campaign's figures (cases, outcomes, worst wall time and child memory):
#: measured, never asserted.
_REPORT = os.environ.get("INPAINT_FUZZ_REPORT")
_STATS: dict[str, list] = {"photo": [], "mask": []}


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    if not _REPORT:
        return
    lines = []
    for what, rows in _STATS.items():
        if not rows:
            continue
        accepted = sum(1 for ok, _, _ in rows if ok)
        worst_s = max(r[1] for r in rows)
        worst_mib = max(r[2] for r in rows) / 2**20
        lines.append(
            f"{what}: {len(rows)} cases, {accepted} accepted, {len(rows) - accepted} refused, "
            f"worst wall {worst_s:.3f} s, worst child peak {worst_mib:.0f} MiB"
        )
    with open(_REPORT, "a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


def _decode(what: str, call: Callable[[], Image.Image]) -> Image.Image:
    """Runs one decode and records its wall time and the child's peak memory (figures only)."""
    start = time.perf_counter()
    ok = False
    try:
        result = call()
        ok = True
        return result
    finally:
        _STATS[what].append((ok, time.perf_counter() - start, sandbox.last_peak_bytes()))


# --------------------------------------------------------------------------------------------
# image strategies
# --------------------------------------------------------------------------------------------

PHOTO_MODES = {
    "JPEG": ["RGB", "L", "CMYK"],
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "I;16", "1"],
    "WEBP": ["RGB", "RGBA"],
}


@st.composite
def source_images(draw: st.DrawFn) -> tuple[Image.Image, str, dict]:
    """A small picture in a mode its format stores, and the save options."""
    fmt = draw(st.sampled_from(sorted(PHOTO_MODES)))
    mode = draw(st.sampled_from(PHOTO_MODES[fmt]))
    w = draw(st.integers(16, 72))
    h = draw(st.integers(max(16, math.ceil(w / 16)), 72))
    seed = draw(st.integers(0, 2**16))
    rgb = hostile.photo_array((w, h), seed)
    im = rgb if mode == "RGB" else _in_mode(rgb, mode)
    options: dict = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(30, 98)), "progressive": draw(st.booleans())}
        if draw(st.booleans()):
            options["exif"] = draw(exif_blocks())
    elif fmt == "PNG" and mode in ("RGB", "L", "I;16") and draw(st.booleans()):
        options["transparency"] = _corner_value(im)
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans())}
    return im, fmt, options


def _in_mode(rgb: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    if mode in ("RGBA", "LA"):
        out = rgb.convert(mode)
        out.putalpha(Image.linear_gradient("L").resize(rgb.size))
        return out
    return rgb.convert(mode)


def _corner_value(im: Image.Image) -> object:
    value = im.getpixel((0, 0))
    return tuple(value) if isinstance(value, tuple) else int(value)


@st.composite
def exif_blocks(draw: st.DrawFn) -> bytes:
    """EXIF as cameras write it (any orientation value, odd tags) or raw garbage after the
    ``Exif`` header."""
    if draw(st.booleans()):
        return b"Exif\x00\x00" + draw(st.binary(max_size=200))
    exif = Image.Exif()
    exif[0x0112] = draw(st.integers(0, 65535))  # orientation, valid or not
    if draw(st.booleans()):
        exif[0x010F] = draw(st.text(max_size=40))  # make
    return exif.tobytes()


def encoded(im: Image.Image, fmt: str, options: dict) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


MUTATIONS = ["flip", "truncate", "insert", "delete", "repeat", "marker", "chunk", "eoi"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after 1..4 structure-aware or blind mutations."""
    out = bytearray(data)
    for op in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4)):
        n = len(out)
        if n == 0:
            break
        at = draw(st.integers(0, n))
        if op == "flip":
            out[min(at, n - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 256))]
        elif op == "repeat":
            piece = bytes(out[at : at + draw(st.integers(1, 2048))])
            out[at:at] = piece * draw(st.integers(1, 300))
        elif op == "marker":  # a JPEG segment, maybe with a lying length
            marker = draw(st.integers(0xC0, 0xFE))
            payload = draw(st.binary(max_size=32))
            length = draw(st.one_of(st.just(len(payload) + 2), st.integers(0, 65535)))
            segment = bytes([0xFF, marker]) + struct.pack(">H", length) + payload
            out[2:2] = segment * draw(st.integers(1, 2000))
        elif op == "chunk":  # a PNG chunk after IHDR, right CRC or not
            kind = draw(st.sampled_from([b"tRNS", b"PLTE", b"IDAT", b"iCCP", b"eXIf", b"prVt"]))
            chunk = hostile.png_chunk(kind, draw(st.binary(max_size=600)))
            out[33:33] = chunk * draw(st.integers(1, 400))
        else:  # "eoi": cut and close, as a broken upload that still ends like a JPEG
            out[at:] = b"\xff\xd9"
    return bytes(out)


# --------------------------------------------------------------------------------------------
# image properties
# --------------------------------------------------------------------------------------------


def _check_refusal(error: PermanentError, what: str) -> None:
    assert error.message.startswith(f"The {what} "), error.message
    assert not any(text in error.message for text in LAST_LINE), error.message


@IMAGES
@given(data=st.data(), source=source_images())
def test_fuzzed_photos_are_decoded_exactly_or_refused(
    data: st.DataObject, source: tuple[Image.Image, str, dict]
) -> None:
    im, fmt, options = source
    original = encoded(im, fmt, options)
    intact = data.draw(st.integers(0, 4)) == 0
    payload = original if intact else data.draw(mutated(original))
    try:
        photo = _decode("photo", lambda: decoding.decode_photo(payload, LIMITS))
    except PermanentError as e:
        assert not intact, e.message  # an intact file (any EXIF included) is accepted
        _check_refusal(e, "photo")
        return
    assert photo.mode == "RGB"
    assert min(photo.size) >= decoding.MIN_SIDE
    assert photo.width * photo.height <= LIMITS.max_pixels
    if intact:
        assert sorted(photo.size) == sorted(im.size)
        if fmt == "PNG" and "transparency" not in options and im.mode in ("RGB", "L", "1"):
            assert np.array_equal(np.asarray(photo), np.asarray(im.convert("RGB")))


@MASKS
@given(data=st.data(), source=source_images())
def test_fuzzed_masks_are_binary_at_the_photo_size_or_refused(
    data: st.DataObject, source: tuple[Image.Image, str, dict]
) -> None:
    im, fmt, options = source
    original = encoded(im, fmt, options)
    payload = original if data.draw(st.booleans()) else data.draw(mutated(original))
    size = im.size if data.draw(st.booleans()) else (im.width * 2, im.height * 2)
    try:
        mask = _decode("mask", lambda: decode_mask(payload, size, LIMITS))
    except MaskMismatchError:
        return
    except PermanentError as e:
        _check_refusal(e, "mask")
        return
    assert mask.mode == "L" and mask.size == size
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


@pytest.mark.parametrize(
    "data",
    [
        hostile.jpeg_repeated_scan(64, 3000),
        hostile.jpeg_app0_flood(100_000),
        hostile.png_private_flood(100_000),
        hostile.png_palette_trns_overflow(),
        hostile.jpeg_cut_with_eoi(128),
        hostile.jpeg_header_lies(4000),
        hostile.tiff_many_strips(5_000),
    ],
    ids=["scans", "app0", "private-chunks", "trns", "cut+eoi", "header-lies", "tiff-strips"],
)
def test_the_campaigns_worst_files_are_refused_by_the_checks(data: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        decoding.decode_photo(data, LIMITS)
    _check_refusal(info.value, "photo")


# --------------------------------------------------------------------------------------------
# envelopes
# --------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
ids = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True), json_values)


@st.composite
def message_data(draw: st.DrawFn) -> object:
    """A Pub/Sub message ``data`` field: base64 of a payload (valid or not) or anything."""
    kind = draw(st.sampled_from(["payload", "json", "bytes", "deep", "any"]))
    if kind == "payload":
        raw = json.dumps({"userId": draw(ids), "sessionId": draw(ids)}).encode()
    elif kind == "json":
        raw = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        raw = draw(st.binary(max_size=64))
    elif kind == "deep":
        depth = draw(st.integers(500, 50_000))
        raw = b"[" * depth + b"]" * depth
    else:
        return draw(json_values)
    return base64.b64encode(raw).decode()


@st.composite
def envelopes(draw: st.DrawFn) -> CloudEvent:
    event_type = draw(
        st.sampled_from(
            [PUBSUB_TYPE, FIRESTORE_PREFIX + "written", FIRESTORE_PREFIX + "created", "x.y"]
        )
    )
    message = {"data": draw(message_data())}
    for field in ("publishTime", "publish_time", "attributes", "messageId", "message_id"):
        if draw(st.booleans()):
            message[field] = draw(
                st.one_of(json_values, st.just("2026-11-24T10:00:00Z"), st.just({"a": "b"}))
            )
    body: object = {"message": message}
    shape = draw(st.sampled_from(["dict", "bytes", "garbage", "any"]))
    if shape == "bytes":
        body = json.dumps(body).encode()
    elif shape == "garbage":
        body = draw(st.binary(max_size=64))
    elif shape == "any":
        body = draw(json_values)
    attributes = {"type": event_type, "source": "//pubsub.googleapis.com/x", "id": "e1"}
    if draw(st.booleans()):
        attributes["time"] = draw(st.text(max_size=30))
    return CloudEvent(attributes, body)


@FAST
@given(event=envelopes())
def test_fuzzed_envelopes_give_a_job_ignored_or_invalid_event(event: CloudEvent) -> None:
    try:
        outcome = parse_event(event)
    except InvalidEventError as e:
        assert e.code == "invalid_request"
        return
    assert isinstance(outcome, JobRequest | Ignored)
    if isinstance(outcome, JobRequest):
        validate_id("userId", outcome.session.user_id)
        validate_id("sessionId", outcome.session.session_id)


# --------------------------------------------------------------------------------------------
# document fields
# --------------------------------------------------------------------------------------------

field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3000),
    json_values,
)


@FAST
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={name: field_values for name in ("prompt", "seed", "steps", "guidance")},
    )
)
def test_fuzzed_document_fields_give_parameters_or_a_permanent_error(fields: dict) -> None:
    try:
        params = job_params(fields, "session-1", SETTINGS)
    except InvalidRequestError as e:
        assert e.message.startswith("The "), e.message
        return
    assert isinstance(params, GenerationParams)
    assert 0 <= params.seed <= MAX_SEED and 1 <= params.steps <= SETTINGS.max_steps
    assert math.isfinite(params.guidance) and 0.0 <= params.guidance <= 100.0
    assert 0 < len(params.prompt) <= SETTINGS.max_prompt_chars
