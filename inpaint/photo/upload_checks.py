"""Cheap structural checks of untrusted image bytes, before any decoder sees them.

Decoders spend time and memory per *structure* (markers, scans, chunks), not only per pixel: a
file of millions of empty markers or thousands of repeated progressive scans costs minutes
inside the image library although it has few pixels. This module walks the container (JPEG
segments, PNG chunks, WebP RIFF chunks) in C-speed steps that stop at the first limit, and
refuses what no camera or drawing app writes, with a message naming the rule. It decodes no
pixel; ``verify_jpeg_data`` then checks a JPEG's entropy-coded data with libjpeg-turbo's
warnings as errors (a file cut mid-scan but ending with an EOI marker, or a header claiming
more pixels than the data holds, decodes without error in Pillow, with grey rows).

Only the formats the app sends, and the two that phones and browsers hand it when a user picks
a picture, are accepted (``ALLOWED_FORMATS``): anything else is refused by its signature.
"""

from __future__ import annotations

import re
import struct
import zlib

import simplejpeg

from inpaint.errors import InvalidImageError

#: JPEG (the app's ``original.jpg``, and what cameras write), PNG (the app's ``mask_auto.png``,
#: screenshots) and WebP (what browsers save from the web). TIFF, GIF, BMP, AVIF, HEIC and every
#: other format are refused by their signature: no pet photo needs them, and each decoder is
#: attack surface (TIFF's strips and tags were the worst case found).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")

#: Segments outside scans (tables, metadata) in one JPEG. libjpeg writes about 10; phones up to
#: ~60 (EXIF, MPF, XMP, an ICC profile split in APP2 pieces of 64 KB). Pillow parses each in
#: Python (2.6 us each): a 40 MiB file of empty APP0 markers (10 M of them) took 26 s.
MAX_JPEG_SEGMENTS = 1024
#: Bytes of APPn/COM metadata in one JPEG (EXIF, XMP including extended XMP, ICC, MPF).
MAX_JPEG_METADATA_BYTES = 16 * 1024 * 1024
#: Scans in one JPEG. libjpeg's progressive files have 10, mozjpeg's optimised ones up to ~20;
#: each scan costs a pass over every coefficient (about 5 ms at 49 MP here), so 3,000 repeated
#: scans took 15.6 s.
MAX_JPEG_SCANS = 64
#: Chunks other than IDAT in one PNG (text, ICC, EXIF, physical size, private chunks).
MAX_PNG_ANCILLARY_CHUNKS = 256
#: Bytes of those chunks.
MAX_PNG_ANCILLARY_BYTES = 16 * 1024 * 1024
#: IDAT chunks in one PNG: encoders split the data in 8 KB..1 MB pieces (a 40 MiB PNG in 8 KB
#: pieces has 5,120); Pillow reads each in Python.
MAX_PNG_IDAT_CHUNKS = 16_384
#: Chunks in one WebP (VP8/VP8L/VP8X, ALPH, ICCP, EXIF, XMP).
MAX_WEBP_CHUNKS = 64

_JPEG_SOI = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The next marker after entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart
# marker (D0-D7) or another fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF_SUPPORTED = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_SOF_UNSUPPORTED = {
    0xC3: "lossless",
    0xC5: "hierarchical",
    0xC6: "hierarchical",
    0xC7: "hierarchical lossless",
    0xC9: "arithmetic-coded",
    0xCA: "arithmetic-coded",
    0xCB: "arithmetic-coded lossless",
    0xCC: "arithmetic-coded",  # DAC: conditioning tables exist only for arithmetic coding
    0xCD: "hierarchical arithmetic-coded",
    0xCE: "hierarchical arithmetic-coded",
    0xCF: "hierarchical arithmetic-coded",
}
# PNG colour type -> allowed bit depths.
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
_PNG_ANIMATION = {b"acTL", b"fcTL", b"fdAT"}


def truncated(fmt: str) -> str:
    """The reason given for a file that ends before its structure does."""
    return f"the {fmt} file is truncated (it may not have been uploaded completely)"


def sniff_format(data: bytes) -> str | None:
    """The allowed format the bytes' signature names, or None."""
    head = bytes(data[:16])
    if head.startswith(_JPEG_SOI):
        return "JPEG"
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_structure(data: bytes, what: str) -> str:
    """Walks the container of an allowed format; returns the format or raises.

    Raises :class:`InvalidImageError` (message starting "The {what} ...") for a file that is
    not JPEG/PNG/WebP by its signature is left to the caller, which words that message.
    """
    fmt = sniff_format(data)
    if fmt == "JPEG":
        _check_jpeg(memoryview(data), what)
    elif fmt == "PNG":
        _check_png(memoryview(data), what)
    elif fmt == "WEBP":
        _check_webp(memoryview(data), what)
    else:
        raise ValueError("not an allowed format")  # callers sniff first
    return fmt


def _refuse(what: str, reason: str) -> InvalidImageError:
    return InvalidImageError(f"The {what} could not be read: {reason}.")


# --------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------


def _check_jpeg(data: memoryview, what: str) -> None:
    """Segment walk from SOI to the first EOI (what follows it, e.g. a phone's MPF second
    picture, is not decoded). One frame, SOF0/1/2 only, bounded segments, metadata and scans,
    every scan with data."""
    n = len(data)
    raw = data.obj if isinstance(data.obj, bytes | bytearray) else bytes(data)
    pos = 2
    segments = metadata = scans = 0
    frame: tuple[int, int] | None = None  # (components, progressive)
    while True:
        if pos >= n:
            raise _refuse(what, truncated("JPEG"))
        if data[pos] != 0xFF:
            raise _refuse(what, f"the JPEG data is corrupt (no marker at byte {pos})")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _refuse(what, truncated("JPEG"))
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01:  # TEM: no length
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x00:
            raise _refuse(what, f"the JPEG data is corrupt (marker 0x{marker:02X} out of place)")
        if pos + 2 > n:
            raise _refuse(what, truncated("JPEG"))
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _refuse(what, "the JPEG data is corrupt (a segment length below 2)")
        if pos + length > n:
            raise _refuse(what, truncated("JPEG"))
        body = data[pos + 2 : pos + length]
        pos += length
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _refuse(
                what,
                f"the JPEG has more than {MAX_JPEG_SEGMENTS} markers (segments), more than "
                "any camera writes",
            )
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            metadata += length
            if metadata > MAX_JPEG_METADATA_BYTES:
                raise _refuse(
                    what,
                    f"the JPEG carries more than {MAX_JPEG_METADATA_BYTES // (1024 * 1024)} MB "
                    "of metadata",
                )
        elif marker in _SOF_UNSUPPORTED:
            raise _refuse(what, f"it is a {_SOF_UNSUPPORTED[marker]} JPEG, which is not supported")
        elif marker in _SOF_SUPPORTED:
            if frame is not None:
                raise _refuse(what, "the JPEG declares more than one frame")
            frame = _jpeg_frame(body, marker, what)
        elif marker == 0xDA:  # SOS
            if frame is None:
                raise _refuse(what, "the JPEG data is corrupt (a scan before the frame header)")
            _jpeg_scan_header(body, frame[0], what)
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _refuse(
                    what,
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans, more than any encoder writes",
                )
            end = _NEXT_MARKER.search(raw, pos)
            if end is None:
                raise _refuse(what, truncated("JPEG"))
            if end.start() == pos:
                raise _refuse(what, "the JPEG data is corrupt (a scan without data)")
            pos = end.start()
    if frame is None:
        raise _refuse(what, "the JPEG has no frame header")
    if scans == 0:
        raise _refuse(what, "the JPEG has no image data (no scan)")


def _jpeg_frame(body: memoryview, marker: int, what: str) -> tuple[int, int]:
    """SOF: 8-bit samples, a height in the header (no DNL), 1, 3 or 4 components."""
    if len(body) < 6:
        raise _refuse(what, "the JPEG frame header is corrupt")
    precision, height, width, count = struct.unpack(">BHHB", body[:6])
    if precision != 8:
        raise _refuse(what, f"it is a {precision}-bit JPEG; only 8-bit JPEGs are supported")
    if height == 0 or width == 0:
        raise _refuse(what, "the JPEG frame header has a zero width or height")
    if count not in (1, 3, 4) or len(body) != 6 + 3 * count:
        raise _refuse(what, "the JPEG frame header is corrupt (components)")
    for i in range(count):
        sampling = body[6 + 3 * i + 1]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4):
            raise _refuse(what, "the JPEG frame header is corrupt (sampling factors)")
    return count, int(marker == 0xC2)


def _jpeg_scan_header(body: memoryview, components: int, what: str) -> None:
    if len(body) < 1 or not 1 <= body[0] <= components or len(body) != 4 + 2 * body[0]:
        raise _refuse(what, "the JPEG scan header is corrupt")


def verify_jpeg_data(data: bytes, what: str) -> None:
    """Entropy-decodes the JPEG at 1/8 scale with libjpeg-turbo's warnings as errors.

    Pillow ignores libjpeg's warnings, so data cut mid-scan but followed by an EOI marker, or a
    header that claims more pixels than the data holds, decodes "successfully" with grey rows.
    simplejpeg's ``strict`` mode turns those warnings into errors; at 1/8 scale the inverse DCT
    and colour conversion cost little, and every coefficient is still decoded.
    """
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        simplejpeg.decode_jpeg(
            data,
            colorspace="CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY",
            strict=True,
            min_height=1,
            min_width=1,
            min_factor=8,
        )
    except (ValueError, RuntimeError) as e:
        text = str(e).lower()
        if "premature end" in text or "truncat" in text:
            raise _refuse(what, f"the JPEG data is incomplete ({e})") from e
        raise _refuse(what, f"the JPEG data is corrupt ({e})") from e


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------


def _check_png(data: memoryview, what: str) -> None:
    """Chunk walk from the signature to IEND: IHDR first and sane, every CRC right, PLTE/tRNS
    consistent, IDAT present and contiguous, no animation, bounded ancillary chunks."""
    n = len(data)
    pos = 8
    ihdr: tuple[int, int] | None = None  # (bit depth, colour type)
    palette_entries = 0
    ancillary = ancillary_bytes = idat_chunks = idat_bytes = 0
    idat_done = trns = False
    while True:
        if pos + 8 > n:
            raise _refuse(what, truncated("PNG"))
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF or not kind.isalpha() or not kind.isascii():
            raise _refuse(what, f"the PNG data is corrupt (no chunk at byte {pos})")
        if pos + 12 + length > n:
            raise _refuse(what, truncated("PNG"))
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            name = kind.decode("ascii")
            raise _refuse(what, f"the PNG data is corrupt (chunk {name} fails its CRC check)")
        pos += 12 + length
        if ihdr is None:
            if kind != b"IHDR":
                raise _refuse(what, "the PNG data is corrupt (IHDR is not the first chunk)")
            ihdr = _png_header(body, what)
            continue
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            if idat_done:
                raise _refuse(what, "the PNG data is corrupt (IDAT chunks are not contiguous)")
            idat_chunks += 1
            idat_bytes += length
            if idat_chunks > MAX_PNG_IDAT_CHUNKS:
                raise _refuse(what, f"the PNG has more than {MAX_PNG_IDAT_CHUNKS} IDAT chunks")
            continue
        if idat_chunks:
            idat_done = True
        if kind in _PNG_ANIMATION:
            raise _refuse(what, "it is an animated PNG, which is not supported")
        if kind == b"IHDR":
            raise _refuse(what, "the PNG data is corrupt (a second IHDR)")
        if kind == b"PLTE":
            palette_entries = _png_palette(body, ihdr[1], what)
            continue
        if kind[0] & 0x20 == 0:  # an unknown critical chunk: a decoder must not skip it
            raise _refuse(what, f"the PNG has an unknown critical chunk {kind.decode('ascii')}")
        ancillary += 1
        ancillary_bytes += length
        if ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            raise _refuse(
                what, f"the PNG has more than {MAX_PNG_ANCILLARY_CHUNKS} ancillary chunks"
            )
        if ancillary_bytes > MAX_PNG_ANCILLARY_BYTES:
            raise _refuse(
                what,
                f"the PNG carries more than {MAX_PNG_ANCILLARY_BYTES // (1024 * 1024)} MB of "
                "ancillary chunks",
            )
        if kind == b"tRNS":
            if trns:
                raise _refuse(what, "the PNG has two transparency (tRNS) chunks")
            trns = True
            _png_transparency(len(body), ihdr, palette_entries, what)
    if ihdr[1] == 3 and palette_entries == 0:
        raise _refuse(what, "the PNG is a palette image without a palette (PLTE)")
    if idat_bytes == 0:
        raise _refuse(what, "the PNG has no image data (IDAT)")


def _png_header(body: memoryview, what: str) -> tuple[int, int]:
    if len(body) != 13:
        raise _refuse(what, "the PNG header (IHDR) is corrupt")
    width, height, depth, ctype, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if width == 0 or height == 0 or width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise _refuse(what, "the PNG header (IHDR) has an invalid width or height")
    if depth not in _PNG_DEPTHS.get(ctype, set()):
        raise _refuse(
            what, f"the PNG header (IHDR) has an invalid colour type {ctype} / bit depth {depth}"
        )
    if compression != 0 or filtering != 0 or interlace > 1:
        raise _refuse(what, "the PNG header (IHDR) names an unknown method")
    return depth, ctype


def _png_palette(body: memoryview, ctype: int, what: str) -> int:
    if ctype in (0, 4):
        raise _refuse(what, "the PNG data is corrupt (a palette in a greyscale image)")
    if len(body) == 0 or len(body) % 3 or len(body) > 768:
        raise _refuse(what, "the PNG palette (PLTE) is corrupt")
    return len(body) // 3


def _png_transparency(length: int, ihdr: tuple[int, int], palette_entries: int, what: str) -> None:
    """tRNS: at most one alpha per palette entry; one grey or RGB key; none with an alpha
    channel. 16-bit RGB keys are refused: Pillow decodes those images to 8 bits per channel, so
    the key could no longer be matched exactly."""
    depth, ctype = ihdr
    if ctype == 3:
        if palette_entries == 0:
            raise _refuse(what, "the PNG transparency (tRNS) comes before its palette")
        if length > palette_entries:
            raise _refuse(
                what,
                f"the PNG transparency (tRNS) has {length} entries but the palette only "
                f"{palette_entries}",
            )
    elif (ctype, length) not in ((0, 2), (2, 6)):
        raise _refuse(what, "the PNG transparency (tRNS) does not fit its colour type")
    elif ctype == 2 and depth == 16:
        raise _refuse(what, "colour-key transparency in 16-bit colour PNGs is not supported")


# --------------------------------------------------------------------------------------------
# WebP
# --------------------------------------------------------------------------------------------


def _check_webp(data: memoryview, what: str) -> None:
    """RIFF walk: the declared length present, bounded chunks, one still image."""
    n = len(data)
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = 8 + riff_size
    if end > n:
        raise _refuse(what, truncated("WebP"))
    pos = 12
    chunks = 0
    image = False
    while pos < end:
        if pos + 8 > end:
            raise _refuse(what, "the WebP data is corrupt (a chunk header cut short)")
        kind = bytes(data[pos : pos + 4])
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > end:
            raise _refuse(what, truncated("WebP"))
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise _refuse(what, f"the WebP has more than {MAX_WEBP_CHUNKS} chunks")
        if kind in (b"ANIM", b"ANMF"):
            raise _refuse(what, "it is an animated WebP, which is not supported")
        if kind in (b"VP8 ", b"VP8L"):
            if image:
                raise _refuse(what, "the WebP holds more than one image")
            image = size > 0
        pos += 8 + size + (size & 1)
    if not image:
        raise _refuse(what, "the WebP has no image data")
