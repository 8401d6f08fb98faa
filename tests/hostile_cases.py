"""Hostile and broken input: the tables both levels share.

* ``EVENT_CASES``: deliveries that must not become a job (broken CloudEvents, broken Pub/Sub
  envelopes, hostile IDs, wrong types, huge bodies). Each must be acknowledged (HTTP 200: a
  non-2xx answer makes Pub/Sub redeliver it for a day), logged with the specific reason, and leave
  every object and every document exactly as it was.
* ``SESSION_CASES``: well-formed deliveries for sessions whose document or files are broken or
  unusual. Each must end in the expected state (a specific ``errorMessage``, or a correct
  result), be acknowledged, write no partial outputs on failure, leave the inputs untouched and
  leave the instance healthy.

Every case runs in-process through functions-framework's test client (``tests/test_main.py``);
``tests/e2e/test_hostile.py`` runs one case per failure class against the real servers.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from benchmarks import hostile_inputs as hostile
from tests.samples import ellipse_mask, photo_jpeg, pixels
from tools import eventlib

SIZE = (720, 480)
OUTPUTS = {"edited.jpg", "preview.jpg"}
PUBSUB_HEADERS, _ = eventlib.pubsub_binary("u", "s")
FIRESTORE_TYPE = "google.cloud.firestore.document.v1."


# --------------------------------------------------------------------------- builders


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _envelope(data: object = None, *, message: object = "default") -> bytes:
    """A Pub/Sub event body (``MessagePublishedData`` JSON) with the given message data."""
    if message == "default":
        message = {"data": data, "messageId": "1", "publishTime": "2026-11-24T10:00:00Z"}
    return json.dumps({"subscription": "projects/p/subscriptions/s", "message": message}).encode()


def _ids(user: object, session: object) -> bytes:
    return _envelope(_b64(json.dumps({"userId": user, "sessionId": session}).encode()))


def _png(image: Image.Image) -> bytes:
    return _encode(image, "PNG")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    return _encode(image, "JPEG")


def _header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` with a few bytes of data: a
    decompression bomb in a few hundred bytes (it must be refused from the header alone)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _photo() -> Image.Image:
    return Image.open(io.BytesIO(photo_jpeg(SIZE)))


def _mask(size=SIZE) -> Image.Image:
    return Image.open(io.BytesIO(ellipse_mask(size))).convert("L")


def _exif_rotated_photo() -> bytes:
    """Stored 480x720 (portrait) with EXIF orientation 6: displayed as 720x480."""
    stored = _photo().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


HTML_PAGE = (
    b"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Error 404 (Not Found)"
    b"</title></head><body><p><b>404.</b> That's an error.</p></body></html>\n"
)


# --------------------------------------------------------------------------- event cases


@dataclass(frozen=True)
class EventCase:
    """``build(bystander_user, bystander_session) -> (headers, body)``; ``expect`` is the
    logged reason (``event rejected: ...`` / ``event ignored: ...``), or with ``wsgi`` the
    acknowledgement of a body the framework refused before the function ran."""

    build: Callable[[str, str], tuple[dict, bytes]]
    expect: str
    wsgi: bool = False


def _binary(body: bytes, **headers: str) -> Callable[[str, str], tuple[dict, bytes]]:
    return lambda u, s: (PUBSUB_HEADERS | headers, body)


def _firestore(kind: str, path: str | None = None) -> Callable[[str, str], tuple[dict, bytes]]:
    def build(u: str, s: str) -> tuple[dict, bytes]:
        headers, body = eventlib.firestore_event(u, s, kind=kind)
        if path is not None:  # the same event for a document outside users/*/sessions/*
            from google.events.cloud.firestore import DocumentEventData

            decoded = DocumentEventData.deserialize(body)
            decoded.value.name = decoded.value.name.replace(f"users/{u}/sessions/{s}", path)
            body = DocumentEventData.serialize(decoded)
        return headers, body

    return build


def _padded(size: int) -> Callable[[str, str], tuple[dict, bytes]]:
    """A structured-mode event for the bystander session, padded to ``size`` bytes."""

    def build(u: str, s: str) -> tuple[dict, bytes]:
        headers, body = eventlib.pubsub_structured(u, s)
        event = json.loads(body)
        event["padding"] = "x" * size
        return headers, json.dumps(event).encode()

    return build


def _chunked_padded(size: int) -> Callable[[str, str], tuple[dict, bytes]]:
    """A valid event for the bystander followed by ``size`` bytes of whitespace, sent chunked
    (no Content-Length): cut at the limit it would still parse, so it must be refused whole."""

    def build(u: str, s: str) -> tuple[dict, bytes]:
        headers, body = eventlib.pubsub_binary(u, s)
        return headers, body + b" " * size

    return build


EVENT_CASES: dict[str, EventCase] = {
    "body-not-json": EventCase(_binary(b"{not json"), "event body is not JSON"),
    "body-utf16-json": EventCase(_binary('{"x": 1}'.encode("utf-16")), "event has no message"),
    "json-without-message": EventCase(_binary(b"{}"), "event has no message"),
    "json-null": EventCase(_binary(b"null"), "event has no message"),
    "message-not-object": EventCase(_binary(_envelope(message="hi")), "event has no message"),
    "message-without-data": EventCase(_binary(_envelope(message={})), "message has no data"),
    "data-not-base64": EventCase(_binary(_envelope("!!not base64**")), "not valid base64"),
    "data-base64-of-text": EventCase(
        _binary(_envelope(_b64(b"hello world"))), "data is not a JSON object"
    ),
    "data-base64-of-array": EventCase(
        _binary(_envelope(_b64(b'["u", "s"]'))), "data is not a JSON object"
    ),
    "data-base64-of-binary": EventCase(
        _binary(_envelope(_b64(bytes(range(256))))), "data is not a JSON object"
    ),
    "user-id-missing": EventCase(
        _binary(_envelope(_b64(b'{"sessionId": "s"}'))), "userId is missing or empty"
    ),
    "session-id-missing": EventCase(
        lambda u, s: (PUBSUB_HEADERS, _envelope(_b64(json.dumps({"userId": u}).encode()))),
        "sessionId is missing or empty",
    ),
    "user-id-empty": EventCase(_binary(_ids("", "s")), "userId is missing or empty"),
    "session-id-empty": EventCase(
        lambda u, s: (PUBSUB_HEADERS, _ids(u, "")), "sessionId is missing or empty"
    ),
    "user-id-number": EventCase(_binary(_ids(12345, "s")), "userId is missing or empty"),
    "user-id-object": EventCase(_binary(_ids({"$ne": ""}, "s")), "userId is missing or empty"),
    "user-id-null": EventCase(_binary(_ids(None, "s")), "userId is missing or empty"),
    "id-with-slash": EventCase(
        lambda u, s: (PUBSUB_HEADERS, _ids(f"{u}/sessions/{s}", s)),
        "is invalid: IDs are 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'",
    ),
    "id-dotdot": EventCase(lambda u, s: (PUBSUB_HEADERS, _ids(u, "..")), "sessionId '..' is"),
    "id-percent-2f": EventCase(_binary(_ids("a%2Fb", "s")), "userId 'a%2Fb' is invalid"),
    "id-nul": EventCase(_binary(_ids("a\x00b", "s")), "userId 'a\\\\x00b' is invalid"),
    "id-unicode": EventCase(_binary(_ids("us\u0435r", "s")), "userId 'us\\\\u0435r' is invalid"),
    "id-10000-chars": EventCase(_binary(_ids("a" * 10_000, "s")), "'... is invalid"),
    "wrong-event-type": EventCase(
        lambda u, s: ({**PUBSUB_HEADERS, "ce-type": "com.example.x"}, _ids(u, s)),
        "unsupported event type 'com.example.x'",
    ),
    "firestore-type-json-body": EventCase(
        lambda u, s: ({**PUBSUB_HEADERS, "ce-type": FIRESTORE_TYPE + "written"}, _ids(u, s)),
        "the Firestore event data is not a DocumentEventData",
    ),
    "firestore-garbage-protobuf": EventCase(
        _binary(
            b"\xff\xfe\x00 not a protobuf",
            **{"ce-type": FIRESTORE_TYPE + "written", "content-type": "application/protobuf"},
        ),
        "not a DocumentEventData",
    ),
    "firestore-updated-event": EventCase(_firestore("updated"), "events never start a job"),
    "firestore-deleted-event": EventCase(_firestore("deleted"), "events never start a job"),
    "firestore-other-collection": EventCase(
        _firestore("written", "users/x/orders/y"), "not a session document"
    ),
    "structured-missing-fields": EventCase(
        lambda u, s: ({"content-type": "application/cloudevents+json"}, b'{"specversion":"1.0"}'),
        "not processed: Bad Request",
        wsgi=True,
    ),
    "structured-10MB": EventCase(
        _padded(10 * 1024 * 1024), "not processed: Request Entity Too Large", wsgi=True
    ),
    "chunked-10MB-no-length": EventCase(
        _chunked_padded(10 * 1024 * 1024), "not processed: Request Entity Too Large", wsgi=True
    ),
    # issue 30: bodies the framework itself could not parse (answered 500 before)
    "structured-not-utf8": EventCase(
        lambda u, s: ({"content-type": "application/cloudevents+json"}, b"\xff\xfe\x00{garbage"),
        "not processed",
        wsgi=True,
    ),
    "structured-json-100000-deep": EventCase(
        lambda u, s: (
            {"content-type": "application/cloudevents+json"},
            b"[" * 100_000 + b"]" * 100_000,
        ),
        "the body cannot be parsed (RecursionError)",
        wsgi=True,
    ),
    "binary-json-100000-deep": EventCase(
        _binary(b"[" * 100_000 + b"]" * 100_000),
        "the body cannot be parsed (DataUnmarshallerError)",
        wsgi=True,
    ),
    "push-json-100000-deep": EventCase(
        lambda u, s: ({"content-type": "application/json"}, b'{"a":' * 100_000 + b"}" * 100_000),
        "the body cannot be parsed (RecursionError)",
        wsgi=True,
    ),
    "push-not-utf8": EventCase(
        lambda u, s: ({"content-type": "application/json"}, b"\xff\xfe{not utf-8"),
        "not processed",
        wsgi=True,
    ),
    # issue 30: message fields the publisher controls
    "data-json-100000-deep": EventCase(
        _binary(_envelope(_b64(b"[" * 100_000 + b"]" * 100_000))), "data is not a JSON object"
    ),
    "publish-time-garbage": EventCase(
        lambda u, s: (
            PUBSUB_HEADERS,
            _envelope(
                message={
                    "data": _b64(json.dumps({"userId": u, "sessionId": s}).encode()),
                    "publishTime": "garbage",
                }
            ),
        ),
        "the Pub/Sub message is malformed (ParseError",
    ),
    "attributes-not-strings": EventCase(
        lambda u, s: (
            PUBSUB_HEADERS,
            _envelope(
                message={
                    "data": _b64(json.dumps({"userId": u, "sessionId": s}).encode()),
                    "attributes": {"a": 1},
                }
            ),
        ),
        "the Pub/Sub message is malformed (ParseError",
    ),
}


# --------------------------------------------------------------------------- session cases


@dataclass(frozen=True)
class SessionCase:
    """Inputs of one session (``None``: not uploaded) and what must come of them: a failure
    whose ``errorMessage`` contains ``error``, or completion checked by ``check``."""

    photo: bytes | None = None
    mask: bytes | None = None
    doc: dict = field(default_factory=dict)
    create_doc: bool = True
    error: str | None = None
    check: Callable[[dict, Image.Image, Image.Image], None] | None = None
    size: tuple[int, int] = SIZE

    def create(self, sessions: Any) -> tuple[str, str]:
        """The session as the app creates it, with only this case's inputs, through ``sessions``
        (the e2e ``Sessions`` or the in-process app: the same arguments)."""
        return sessions.create(
            photo=self.photo,
            mask=self.mask,
            doc=self.doc,
            upload_photo=self.photo is not None,
            upload_mask=self.mask is not None,
            create_doc=self.create_doc,
        )


def _masked_region_changed(doc: dict, original: Image.Image, edited: Image.Image) -> None:
    assert doc["maskEmpty"] is False and doc["timings"]["inference"] > 0
    assert np.abs(pixels(edited) - pixels(original)).mean() > 1.0  # the (noise) model painted


def _unchanged(doc: dict, original: Image.Image, edited: Image.Image) -> None:
    assert doc["maskEmpty"] is True and doc["region"] is None
    assert np.abs(pixels(edited) - pixels(original)).mean() < 2.0  # the original, re-encoded


def _default_prompt_used(doc: dict, original: Image.Image, edited: Image.Image) -> None:
    from inpaint.config import DEFAULT_PROMPT

    assert doc["promptUsed"] == DEFAULT_PROMPT
    _masked_region_changed(doc, original, edited)


def _rgba_strokes() -> bytes:
    canvas = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line((40, 40, 500, 300), fill=(255, 0, 0, 255), width=40)
    return _png(canvas)


def _mask_16bit() -> bytes:
    wide = np.asarray(_mask()).astype(np.uint16) * 257
    return _png(Image.fromarray(wide))


def _nearly_opaque_mask() -> bytes:
    """White on black with alpha 250 everywhere: the luminance, not the alpha, is the mask."""
    mask = _mask().convert("RGBA")
    mask.putalpha(250)
    return _png(mask)


def _outside_kept(doc: dict, original: Image.Image, edited: Image.Image) -> None:
    """Painted inside the ellipse only: the corners keep the original."""
    _masked_region_changed(doc, original, edited)
    corner = (0, 0, 80, 60)
    diff = np.abs(pixels(edited.crop(corner)) - pixels(original.crop(corner)))
    assert diff.mean() < 2.0


PHOTO = photo_jpeg(SIZE)
MASK = ellipse_mask(SIZE)
SEED_ERROR = "The seed must be a whole number from 0 to 4294967295."

SESSION_CASES: dict[str, SessionCase] = {
    # documents and files that are missing or empty
    "photo-missing": SessionCase(mask=MASK, error="The photo was not found in Storage at users/"),
    "mask-missing": SessionCase(photo=PHOTO, error="The mask was not found in Storage at users/"),
    "photo-zero-bytes": SessionCase(b"", MASK, error="The photo is empty (0 bytes)."),
    "mask-zero-bytes": SessionCase(PHOTO, b"", error="The mask is empty (0 bytes)."),
    # broken or disguised files
    "photo-truncated-jpeg": SessionCase(
        PHOTO[: len(PHOTO) * 6 // 10], MASK, error="The photo could not be read: the JPEG file is t"
    ),
    "mask-truncated-png": SessionCase(
        PHOTO, MASK[: len(MASK) // 2], error="The mask could not be read: the PNG file is truncated"
    ),
    "photo-is-html-page": SessionCase(
        HTML_PAGE, MASK, error="it is an HTML or XML document (maybe an error page), not an image"
    ),
    "photo-is-pdf": SessionCase(b"%PDF-1.7\n1 0 obj<<>>endobj\n", MASK, error="a PDF document"),
    "photo-is-heic": SessionCase(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        MASK,
        error="HEIC/HEIF photos are not supported; please upload a JPEG or PNG",
    ),
    "photo-png-named-jpg": SessionCase(_png(_photo()), MASK, check=_masked_region_changed),
    "photo-webp-named-jpg": SessionCase(
        _encode(_photo(), "WEBP"), MASK, check=_masked_region_changed
    ),
    "photo-cmyk-jpeg": SessionCase(
        _jpeg(_photo().convert("CMYK")), MASK, check=_masked_region_changed
    ),
    "photo-exif-rotated": SessionCase(_exif_rotated_photo(), MASK, check=_masked_region_changed),
    "mask-is-jpeg-named-png": SessionCase(PHOTO, _jpeg(_mask()), check=_masked_region_changed),
    # sizes
    "photo-bomb-30000x30000-header": SessionCase(
        _header_only_png(30_000, 30_000), MASK, error="The photo is 900 MP, above the limit of 50"
    ),
    "photo-64MP-header": SessionCase(
        _header_only_png(8_000, 8_000), MASK, error="The photo is 8000x8000 = 64 MP, above the lim"
    ),
    "mask-bomb-30000x30000-header": SessionCase(
        PHOTO, _header_only_png(30_000, 30_000), error="The mask is 900 MP, above the limit of 50"
    ),
    "photo-1x1": SessionCase(
        _jpeg(Image.new("RGB", (1, 1))),
        _png(Image.new("L", (1, 1), 255)),
        error="The photo is 1x1 pixels; at least 16 pixels on each side are needed.",
    ),
    "photo-20000x20": SessionCase(
        _jpeg(Image.new("RGB", (20_000, 20), (90, 120, 60))),
        _png(Image.new("L", (20_000, 20), 255)),
        error="The photo is 20000x20 pixels, an aspect ratio of 1000:1; at most 16:1",
    ),
    # masks
    "mask-other-aspect-ratio": SessionCase(
        PHOTO, ellipse_mask((400, 400)), error="their aspect ratios differ (1.000 vs 1.500)"
    ),
    "mask-in-stored-orientation": SessionCase(
        PHOTO, ellipse_mask((480, 720)), error="The mask seems to follow the photo's stored orie"
    ),
    "mask-smaller-same-aspect": SessionCase(
        PHOTO, ellipse_mask((360, 240)), check=_masked_region_changed
    ),
    "mask-empty": SessionCase(PHOTO, _png(Image.new("L", SIZE, 0)), check=_unchanged),
    "mask-full": SessionCase(PHOTO, _png(Image.new("L", SIZE, 255)), check=_masked_region_changed),
    "mask-16-bit": SessionCase(PHOTO, _mask_16bit(), check=_masked_region_changed),
    "mask-palette": SessionCase(PHOTO, _png(_mask().convert("P")), check=_masked_region_changed),
    "mask-rgba-strokes": SessionCase(PHOTO, _rgba_strokes(), check=_masked_region_changed),
    # issue 30: hostile files (small versions of the fuzz campaign's worst ones)
    "photo-tiff-one-byte-strips": SessionCase(
        hostile.tiff_many_strips(20_000), MASK, error="TIFF images are not supported"
    ),
    "photo-progressive-scan-repeated": SessionCase(
        hostile.jpeg_repeated_scan(720, 3000), MASK, error="JPEG has more than 64 scans"
    ),
    "photo-empty-app0-flood": SessionCase(
        hostile.jpeg_app0_flood(400_000), MASK, error="JPEG has more than 1024 markers"
    ),
    "mask-private-chunk-flood": SessionCase(
        PHOTO, hostile.png_private_flood(400_000), error="The mask could not be read: the PNG h"
    ),
    "photo-palette-trns-overflow": SessionCase(
        hostile.png_palette_trns_overflow(), MASK, error="transparency (tRNS) has 300 entries"
    ),
    "mask-palette-trns-overflow": SessionCase(
        PHOTO, hostile.png_palette_trns_overflow(), error="The mask could not be read: the PNG t"
    ),
    "photo-cut-mid-scan-with-eoi": SessionCase(
        PHOTO[: len(PHOTO) * 6 // 10].rstrip(b"\xff") + b"\xff\xd9",
        MASK,
        error="The photo could not be read: the JPEG data is incomplete",
    ),
    "photo-header-claims-4000x4000": SessionCase(
        hostile.jpeg_header_lies(4000), MASK, error="the JPEG data is incomplete"
    ),
    "mask-alpha-250-everywhere": SessionCase(PHOTO, _nearly_opaque_mask(), check=_outside_kept),
    # document fields
    "prompt-100000-chars": SessionCase(
        PHOTO, MASK, {"prompt": "cat " * 25_000}, error="100000 characters long; the limit is 2000"
    ),
    "prompt-not-text": SessionCase(
        PHOTO, MASK, {"prompt": ["a", "cat"]}, error="The prompt must be text."
    ),
    "prompt-blank": SessionCase(PHOTO, MASK, {"prompt": " \n\t "}, check=_default_prompt_used),
    "seed-float": SessionCase(PHOTO, MASK, {"seed": 1.5}, error=SEED_ERROR),
    "seed-bool": SessionCase(PHOTO, MASK, {"seed": True}, error=SEED_ERROR),
    "seed-numeric-string": SessionCase(PHOTO, MASK, {"seed": "42"}, error=SEED_ERROR),
    "seed-negative": SessionCase(PHOTO, MASK, {"seed": -1}, error=SEED_ERROR),
    "seed-2-to-the-40": SessionCase(PHOTO, MASK, {"seed": 2**40}, error=SEED_ERROR),
    "steps-zero": SessionCase(
        PHOTO, MASK, {"steps": 0}, error="The steps must be a whole number from 1 to 200."
    ),
    "steps-1000": SessionCase(
        PHOTO, MASK, {"steps": 1000}, error="The steps must be a whole number from 1 to 200."
    ),
    "guidance-text": SessionCase(
        PHOTO, MASK, {"guidance": "high"}, error="The guidance must be a number from 0 to 100."
    ),
    "guidance-nan": SessionCase(
        PHOTO, MASK, {"guidance": math.nan}, error="The guidance must be a number from 0 to 100."
    ),
}


def assert_session_outcome(
    case: SessionCase,
    doc: dict | None,
    inputs: dict[str, object],
    versions: dict[str, object],
    image: Callable[[str], Image.Image],
) -> None:
    """What a session case must end in: ``inputs`` and ``versions`` are the session's files
    (name -> version) before and after the delivery; ``image(name)`` opens one of them."""
    assert (case.error is None) != (case.check is None)
    assert doc is not None
    assert {k: versions[k] for k in inputs} == inputs  # the inputs untouched
    if case.error is not None:
        assert doc["processingStatus"] == "failed", doc
        assert doc.get("attempts", 1) == 1  # recorded on the first delivery
        assert case.error in doc["errorMessage"], doc["errorMessage"]
        assert doc["errorCode"] and not OUTPUTS & set(versions)  # no partial outputs
        assert doc.get("progress", 0.0) == 0.0 and "timings" not in doc  # no denoising step
        return
    assert case.check is not None
    assert doc["processingStatus"] == "completed", doc
    assert doc["errorMessage"] is None and doc["attempts"] == 1
    assert set(versions) >= OUTPUTS
    displayed = ImageOps.exif_transpose(image("original.jpg"))
    edited, preview = image("edited.jpg"), image("preview.jpg")
    assert edited.format == preview.format == "JPEG"
    assert edited.size == displayed.size == case.size
    assert max(preview.size) == 512
    case.check(doc, displayed, edited)
