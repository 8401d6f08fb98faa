"""Untrusted bytes to a known shape: the checks and the limited decode every input goes through,
and the photo as RGB in its displayed orientation (the mask's own rules: ``inpaint.photo.mask``).

Every way the bytes can be unusable becomes an :class:`~inpaint.errors.InvalidImageError` (or a
:class:`~inpaint.errors.MaskMismatchError`) whose message names the input and the problem,
because that message is shown to the user as is. Only JPEG, PNG and WebP are decoded, after
their structure is checked (``inpaint.photo.upload_checks``) and their limits read from the
header; the decoding itself runs in a child process with CPU and memory limits
(``inpaint.photo.sandbox``), so no file can cost more than one bounded decode, and no library
exception escapes as anything but a permanent error. PIL + numpy (+ simplejpeg for the JPEG
integrity check).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import (
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401  (imported to register the decoders ALLOWED_FORMATS names)
    PngImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from inpaint.errors import InvalidImageError, PermanentError
from inpaint.photo import colour, sandbox
from inpaint.photo.upload_checks import (
    ALLOWED_FORMATS,
    check_structure,
    sniff_format,
    verify_jpeg_data,
)

if TYPE_CHECKING:
    from inpaint.config import Settings

log = logging.getLogger(__name__)

#: Whether ``decode_photo`` / ``mask.read_mask`` decode in a limited child process
#: (``inpaint.photo.sandbox``): the last line of defence against a file that the structure checks do
#: not understand. Off only for tests that patch this module's internals (a child, forked from
#: a server that imported this module afresh, does not see their patches).
ISOLATED = True
#: What crosses the process boundary besides the pixel bytes: mode, size and ``info``.
ImageMeta = tuple[str, tuple[int, int], dict]
#: Smallest accepted side (photo and mask). Below this there is nothing to inpaint sensibly, and
#: the working size could not keep both sides at a multiple of 16.
MIN_SIDE = 16
#: Largest accepted aspect ratio (long side / short side) of the photo. Up to 16:1 (wide phone
#: panoramas) the pipeline works: small masks are cropped to a near-square region, and even a
#: full-width mask gives a 1 MP working size with a short side of about 250 px. Beyond that the
#: model would see a strip a few latent rows high, so we refuse with a clear message instead.
MAX_ASPECT = 16.0
#: Baseline JPEG cannot store a side longer than this, and edited.jpg keeps the original size.
MAX_JPEG_SIDE = 65_500
# Leading bytes of the allowed formats, only to word the message for a file cut inside its header.
_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("WEBP", b"RIFF"),
)
# Formats refused by their signature, named so that the user knows what to send instead.
_REFUSED_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("GIF", b"GIF8"),
    ("BMP", b"BM"),
)


@dataclass(frozen=True)
class ImageLimits:
    """Input limits: a byte size and a pixel count (checked from the header, before decoding)."""

    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, s: Settings) -> ImageLimits:
        """The limits configured by ``INPAINT_MAX_INPUT_BYTES`` / ``INPAINT_MAX_INPUT_PIXELS``."""
        return cls(max_bytes=s.max_input_bytes, max_pixels=s.max_input_pixels)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_photo(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decodes the photo into RGB, in its displayed orientation.

    - Format is sniffed from the bytes (a PNG named ``.jpg`` is fine); see ``ALLOWED_FORMATS``.
    - Limits: byte size first, then pixel count, minimum side, aspect ratio (``MAX_ASPECT``) from
      the header *before* any pixel is decoded, so decompression bombs cost nothing. PIL's own
      bomb check (``Image.MAX_IMAGE_PIXELS``) may fire first for giant headers; it is reported
      the same way. The effective limit is therefore the smaller of the two.
    - The pixels are loaded inside the ``try``, so truncated files are errors, not grey bands.
    - EXIF orientation is applied (``ImageOps.exif_transpose``); a broken EXIF block is ignored
      rather than failing the job.
    - Colour: any mode becomes RGB. Transparent pixels are composited on white (a cut-out PNG
      would otherwise show whatever colour hides under alpha 0, often black); 16-bit and
      32-bit/float greyscale are scaled to 8 bits (see ``high_depth_to_l``), never clipped;
      CMYK goes through its embedded ICC profile when there is one.
    - The result's ``info`` holds only ``icc_profile`` (when it is an RGB profile), so outputs
      keep the photo's colour space (e.g. Display P3) but carry no EXIF (no GPS, no stale
      orientation tag).
    """
    if not ISOLATED:
        return guarded("photo", _photo_pixels, data, limits)
    check_type(data, "photo")
    meta, payload = sandbox.run(_photo_payload, bytes(data), limits, what="photo")
    return from_payload(meta, payload)


def decode_photo_in_process(data: bytes, limits: ImageLimits) -> Image.Image:
    """``decode_photo`` in this process, whatever ``ISOLATED`` says (the sandbox's warm-up)."""
    return guarded("photo", _photo_pixels, data, limits)


def _photo_payload(data: bytes, limits: ImageLimits) -> tuple[ImageMeta, bytes]:
    """In the decoding child: the photo as (mode, size, info) and its pixel bytes."""
    return to_payload(guarded("photo", _photo_pixels, data, limits))


def to_payload(im: Image.Image) -> tuple[ImageMeta, bytes]:
    return (im.mode, im.size, dict(im.info)), im.tobytes()


def from_payload(meta: ImageMeta, payload: bytes) -> Image.Image:
    mode, size, info = meta
    im = Image.frombytes(mode, size, payload)
    im.info = info
    return im


def check_type(data: object, what: str) -> None:
    """Data that is not bytes at all is a caller's bug, not the user's error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} data must be bytes, not {type(data).__name__}")


def _photo_pixels(data: bytes, limits: ImageLimits) -> Image.Image:
    """``decode_photo`` without its guard."""
    im = open_checked(data, limits, "photo")
    icc = im.info.get("icc_profile")
    rgb = colour.to_rgb(im, icc)
    keep = icc is not None and im.mode != "CMYK" and colour.is_rgb_profile(icc)
    rgb.info = {"icc_profile": icc} if keep else {}
    return rgb


def guarded(
    what: str, work: Callable[[bytes, ImageLimits], Image.Image], data: bytes, limits: ImageLimits
) -> Image.Image:
    """Runs one input's decoding so that only the project's permanent errors leave it.

    Pillow and its decoders raise many exception types on hostile files (``TypeError`` for an
    ICC tag of the wrong type, ``ValueError`` for a palette index out of range, ...). Left raw,
    each would be answered as a transient fault and retried until "attempts exhausted"; a file
    that fails once fails every time, so it is the user's permanent error. ``MemoryError`` is
    left alone: in this process it may be the instance's, not the file's (the decode worker
    turns its own, under its memory limit, into a permanent error). ``TypeError`` for data that
    is not bytes at all is a caller's bug and is raised before this guard.
    """
    check_type(data, what)
    try:
        return work(data, limits)
    except (PermanentError, MemoryError):
        raise
    except Exception as e:
        log.warning("unexpected %s while decoding the %s: %s", type(e).__name__, what, e)
        raise InvalidImageError(
            f"The {what} could not be read: the image data is corrupt ({type(e).__name__})."
        ) from e


def open_checked(data: bytes, limits: ImageLimits, what: str) -> Image.Image:
    """Opens, checks and fully loads one input, and applies its EXIF orientation.

    Order: byte size, signature (``ALLOWED_FORMATS``), container structure
    (``inpaint.photo.upload_checks``), header dimensions, JPEG entropy data, then the pixels. Any
    exception that escapes a library is turned into an ``InvalidImageError`` by ``guarded``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise InvalidImageError(f"The {what} is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(
            f"The {what} is {_format_bytes(len(data))}, above the limit of "
            f"{_format_bytes(limits.max_bytes)}."
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(f"The {what} could not be read: {_sniff(data)}.")
    return _load_checked(data, fmt, limits, what)


def _load_checked(data: bytes, fmt: str, limits: ImageLimits, what: str) -> Image.Image:
    """The body of ``open_checked`` once the format is known."""
    check_structure(data, what)
    try:
        im = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as e:
        raise InvalidImageError(_bomb_message(what, e, limits)) from e
    except UnidentifiedImageError as e:
        raise InvalidImageError(f"The {what} could not be read: {_sniff(data)}.") from e
    except MemoryError:
        raise
    except Exception as e:  # PIL raises many types on malformed headers
        raise _unreadable(what, e, data) from e

    _check_dimensions(im.size, limits, what)
    if fmt == "JPEG":
        verify_jpeg_data(data, what)
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise InvalidImageError(_bomb_message(what, e, limits)) from e
    except MemoryError:
        raise
    except Exception as e:
        raise _unreadable(what, e, data) from e
    im = colour.apply_colour_key(im, data if fmt == "PNG" else None)

    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as e:  # a corrupt EXIF block must not cost the user their edit
        log.warning("ignoring unreadable EXIF orientation of the %s: %s", what, e)
    return im


def _check_dimensions(size: tuple[int, int], limits: ImageLimits, what: str) -> None:
    """Header-level checks, before any pixel is decoded."""
    w, h = size
    if w * h > limits.max_pixels:
        raise InvalidImageError(
            f"The {what} is {w}x{h} = {_format_mp(w * h)}, above the limit of "
            f"{_format_mp(limits.max_pixels)}."
        )
    if min(w, h) < MIN_SIDE:
        raise InvalidImageError(
            f"The {what} is {w}x{h} pixels; at least {MIN_SIDE} pixels on each side are needed."
        )
    if what == "photo" and max(w, h) > MAX_ASPECT * min(w, h):
        raise InvalidImageError(
            f"The photo is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1; "
            f"at most {MAX_ASPECT:.0f}:1 is supported."
        )
    if max(w, h) > MAX_JPEG_SIDE:
        raise InvalidImageError(
            f"The {what} is {w}x{h} pixels; sides longer than {MAX_JPEG_SIDE} pixels are not "
            "supported."
        )


def _bomb_message(what: str, e: Exception, limits: ImageLimits) -> str:
    """PIL's own bomb error only knows the pixel count; report it in our terms."""
    match = re.search(r"\((\d+) pixels\)", str(e))
    size = _format_mp(int(match.group(1))) if match else "too many pixels"
    return f"The {what} is {size}, above the limit of {_format_mp(limits.max_pixels)}."


def _sniff(data: bytes) -> str:
    """Why bytes that no allowed decoder accepts are not an image, as specifically as we can."""
    head = bytes(data[:64])
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] == b"<":
        return "it is an HTML or XML document (maybe an error page), not an image"
    if head.startswith(b"%PDF"):
        return "it is a PDF document, not an image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace")
        if brand in {"heic", "heix", "hevc", "heim", "heis", "mif1", "msf1"}:
            return "HEIC/HEIF photos are not supported; please upload a JPEG or PNG"
        if brand in {"avif", "avis"}:
            return "AVIF images are not supported; please upload a JPEG or PNG"
        return "it is a video or another ISO media file, not an image"
    for fmt, magic in _REFUSED_MAGIC:
        if head.startswith(magic):
            return f"{fmt} images are not supported; please upload a JPEG or PNG"
    for fmt, magic in _MAGIC:
        if head.startswith(magic) and (fmt != "WEBP" or head[8:12] == b"WEBP"):
            return f"the file starts like a {fmt} image but is truncated or corrupt"
    return f"it is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"


def _unreadable(what: str, e: Exception, data: bytes) -> InvalidImageError:
    """The error for bytes that a decoder rejected."""
    return InvalidImageError(f"The {what} could not be read: {_describe_failure(e, data)}.")


def _describe_failure(e: Exception, data: bytes) -> str:
    """Turns a decoder exception into the user-facing reason.

    libwebp reports a cut file only as "could not create decoder object", so for WebP the RIFF
    container's declared length is compared with the bytes we have.
    """
    text = str(e).lower()
    riff_cut = data[:4] == b"RIFF" and 8 + int.from_bytes(bytes(data[4:8]), "little") > len(data)
    if isinstance(e, EOFError) or "truncat" in text or "premature end" in text or riff_cut:
        return "the file is truncated (it may not have been uploaded completely)"
    return "the image data is corrupt"


def _format_mp(pixels: int) -> str:
    """400 MP, 50 MP, 1.5 MP, 0.04 MP: three significant digits, no exponent."""
    mp = pixels / 1e6
    return f"{mp:.0f} MP" if mp >= 100 else f"{mp:.3g} MP"


def _format_bytes(n: int) -> str:
    """Human-readable byte size (binary units, as the limit's default is 40 MiB)."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.3g} KB"
    return f"{n / (1024 * 1024):.3g} MB"
