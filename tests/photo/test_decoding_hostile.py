"""Hostile uploads (issue 30): each case found by the fuzz campaign, built by code at a small
size, refused with a specific permanent error or decoded to the exact picture.

The files come from ``benchmarks.hostile_inputs``, which the benchmark uses at full size.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from benchmarks import hostile_inputs as hostile
from inpaint.errors import InvalidImageError
from inpaint.photo import colour, decoding, upload_checks
from inpaint.photo.mask import decode_mask

LIMITS = decoding.ImageLimits(max_bytes=40 * 1024 * 1024, max_pixels=50_000_000)


def refused(data: bytes, *fragments: str, what: str = "photo") -> str:
    """Decodes ``data`` as ``what`` and returns the permanent error's message."""
    with pytest.raises(InvalidImageError) as info:
        if what == "photo":
            decoding.decode_photo(data, LIMITS)
        else:
            decode_mask(data, (32, 32), LIMITS)
    message = info.value.message
    assert message.startswith(f"The {what} "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------------------------
# cost that grows with structure
# --------------------------------------------------------------------------------------------


def test_tiff_of_one_byte_strips_is_refused_by_its_signature() -> None:
    refused(hostile.tiff_many_strips(20_000), "TIFF images are not supported")


def test_progressive_jpeg_with_a_scan_repeated_is_refused() -> None:
    refused(
        hostile.jpeg_repeated_scan(128, 3000), f"more than {upload_checks.MAX_JPEG_SCANS} scans"
    )


def test_jpeg_of_empty_app0_markers_is_refused() -> None:
    refused(hostile.jpeg_app0_flood(200_000), "more than 1024 markers")


def test_png_of_empty_private_chunks_is_refused() -> None:
    refused(hostile.png_private_flood(200_000), "more than 256 ancillary chunks")


def test_png_with_too_many_idat_chunks_is_refused() -> None:
    small = hostile.encode(hostile.photo_array((32, 32)))
    empty = hostile.png_chunk(b"IDAT", b"")
    idat = small.index(b"IDAT") - 4
    data = small[:idat] + empty * (upload_checks.MAX_PNG_IDAT_CHUNKS + 1) + small[idat:]
    refused(data, "IDAT chunks")


def test_png_metadata_bytes_are_bounded() -> None:
    small = hostile.encode(hostile.photo_array((32, 32)))
    big = hostile.png_chunk(b"tEXt", b"k\x00" + b"x" * (1024 * 1024))
    data = small[:33] + big * 17 + small[33:]
    refused(data, "more than 16 MB of ancillary chunks")


def test_jpeg_metadata_bytes_are_bounded() -> None:
    small = hostile.encode(hostile.photo_array((32, 32)), "JPEG")
    app = b"\xff\xe1\xff\xff" + b"x" * 0xFFFD
    refused(small[:2] + app * 260 + small[2:], "more than 16 MB of metadata")


# --------------------------------------------------------------------------------------------
# raw exceptions -> permanent errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["photo", "mask"])
def test_palette_png_with_trns_over_its_palette_is_refused(what: str) -> None:
    refused(hostile.png_palette_trns_overflow(300), "tRNS", "palette", what=what)


def test_an_unexpected_library_exception_becomes_a_permanent_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a decoder raises on a hostile file is the user's error, never a retry."""

    def broken(*_: object, **__: object) -> None:
        raise TypeError("ICC tag of the wrong type")

    monkeypatch.setattr(decoding, "ISOLATED", False)  # the patch is this process's
    monkeypatch.setattr(colour, "to_rgb", broken)
    data = hostile.encode(hostile.photo_array((32, 32)))
    message = refused(data, "image data is corrupt (TypeError)")
    assert "ICC" not in message  # library internals are logged, not shown


# --------------------------------------------------------------------------------------------
# wrong pictures accepted silently
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_mid_scan_but_ending_with_eoi_is_refused(keep: float, progressive: bool) -> None:
    data = hostile.encode(hostile.photo_array((256, 256)), "JPEG", progressive=progressive)
    cut = data[: int(len(data) * keep)].rstrip(b"\xff") + b"\xff\xd9"
    refused(cut, "JPEG data is incomplete")


def test_jpeg_header_claiming_more_pixels_than_its_data_is_refused() -> None:
    data = hostile.jpeg_header_lies(4000, 16)
    assert len(data) < 1000
    refused(data, "JPEG data is incomplete")


def test_intact_jpeg_is_still_accepted() -> None:
    src = hostile.photo_array((64, 48))
    got = decoding.decode_photo(hostile.encode(src, "JPEG", quality=95), LIMITS)
    assert got.size == (64, 48)
    assert np.abs(np.asarray(got, np.int16) - np.asarray(src, np.int16)).mean() < 8


def _keyed(mode: str) -> tuple[Image.Image, object]:
    """A 32x32 image whose left half is the key colour; returns it and the key."""
    if mode == "RGB":
        im = Image.new("RGB", (32, 32), (10, 200, 30))
        im.paste((1, 2, 3), (0, 0, 16, 32))
        return im, (1, 2, 3)
    if mode == "L":
        im = Image.new("L", (32, 32), 90)
        im.paste(7, (0, 0, 16, 32))
        return im, 7
    a = np.full((32, 32), 40000, np.uint16)
    a[:, :16] = 1234
    return Image.fromarray(a), 1234


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_colour_key_transparency_becomes_white_in_every_mode(mode: str) -> None:
    im, key = _keyed(mode)
    photo = decoding.decode_photo(hostile.encode(im, transparency=key), LIMITS)
    pixels = np.asarray(photo)
    assert (pixels[:, :16] == 255).all(), mode  # the key is transparent: white
    assert not (pixels[:, 16:] == 255).all(), mode  # the rest keeps its colour


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_colour_key_of_low_bit_grey_png(depth: int) -> None:
    """Pillow scales 1/2/4-bit grey samples to 8 bits but not the key: applied at the source
    depth."""
    width = 32
    key = (1 << depth) - 1  # white at that depth
    row = np.zeros(width, np.uint8)
    row[:16] = key
    per_byte = 8 // depth
    packed = bytearray()
    for i in range(0, width, per_byte):
        byte = 0
        for j, value in enumerate(row[i : i + per_byte]):
            byte |= int(value) << (8 - depth * (j + 1))
        packed.append(byte)
    raw = b"".join(b"\x00" + bytes(packed) for _ in range(32))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + hostile.png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, 32, depth, 0, 0, 0, 0))
        + hostile.png_chunk(b"tRNS", struct.pack(">H", 0))  # black is transparent
        + hostile.png_chunk(b"IDAT", __import__("zlib").compress(raw))
        + hostile.png_chunk(b"IEND", b"")
    )
    photo = np.asarray(decoding.decode_photo(data, LIMITS))
    assert (photo == 255).all(), depth  # white pixels stay, black ones become white


def test_sixteen_bit_rgb_colour_key_is_refused() -> None:
    a = np.zeros((32, 32, 3), np.uint16)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + hostile.png_chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0))
        + hostile.png_chunk(b"tRNS", b"\x00" * 6)
        + hostile.png_chunk(
            b"IDAT",
            __import__("zlib").compress(b"".join(b"\x00" + r.astype(">u2").tobytes() for r in a)),
        )
        + hostile.png_chunk(b"IEND", b"")
    )
    refused(data, "16-bit colour PNGs")


def test_colour_key_in_a_mask_is_its_alpha() -> None:
    im = Image.new("RGB", (32, 32), (0, 0, 0))  # black key: transparent canvas
    im.paste((50, 50, 50), (8, 8, 24, 24))  # dark but opaque strokes
    mask = decode_mask(hostile.encode(im, transparency=(0, 0, 0)), (32, 32), LIMITS)
    assert mask.getbbox() == (8, 8, 24, 24)


# --------------------------------------------------------------------------------------------
# mask rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [128, 200, 250, 254])
def test_nearly_opaque_alpha_does_not_become_a_full_mask(alpha: int) -> None:
    im = Image.new("RGBA", (32, 32), (0, 0, 0, alpha))
    im.paste((255, 255, 255, alpha), (8, 8, 16, 16))
    mask = decode_mask(hostile.encode(im), (32, 32), LIMITS)
    assert mask.getbbox() == (8, 8, 16, 16)  # the luminance decides


def test_thin_strokes_survive_an_eight_times_larger_mask() -> None:
    big = Image.new("L", (256, 256), 0)
    big.paste(255, (100, 0, 101, 256))  # a one-pixel vertical stroke
    big.paste(255, (0, 37, 256, 38))  # a one-pixel horizontal stroke
    mask = np.asarray(decode_mask(hostile.encode(big), (32, 32), LIMITS))
    assert mask[:, 12].all() and mask[4, :].all()
    assert mask.sum() // 255 == 32 + 32 - 1  # exactly the two strokes, one pixel wide


def test_isolated_specks_do_not_grow_when_a_mask_is_reduced() -> None:
    rng = np.random.default_rng(3)
    specks = np.zeros((256, 256), np.uint8)
    ys, xs = rng.integers(0, 256, 40), rng.integers(0, 256, 40)
    specks[ys, xs] = 255
    mask = decode_mask(hostile.encode(Image.fromarray(specks)), (32, 32), LIMITS)
    assert mask.getbbox() is None


# --------------------------------------------------------------------------------------------
# structure checks, one rule each
# --------------------------------------------------------------------------------------------


def _png() -> bytes:
    return hostile.encode(hostile.photo_array((32, 32)))


def _jpeg() -> bytes:
    return hostile.encode(hostile.photo_array((32, 32)), "JPEG")


def _corrupt_crc(data: bytes) -> bytes:
    out = bytearray(data)
    out[29] ^= 0xFF  # IHDR's CRC
    return bytes(out)


def _animated_png() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ((1, 2, 3), (4, 5, 6))]
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _animated_webp() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ((1, 2, 3), (200, 5, 6))]
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _arithmetic_jpeg() -> bytes:
    data = bytearray(_jpeg())
    for marker, start, _ in hostile.jpeg_segments(bytes(data)):
        if marker == 0xC0:
            data[start + 1] = 0xC9
    return bytes(data)


def _two_frames() -> bytes:
    data = _jpeg()
    sof = next(s for m, s, e in hostile.jpeg_segments(data) if m == 0xC0)
    end = next(e for m, s, e in hostile.jpeg_segments(data) if m == 0xC0)
    return data[:end] + data[sof:end] + data[end:]


def _no_iend() -> bytes:
    data = _png()
    return data[: data.rindex(b"IEND") - 4]


def _unknown_critical() -> bytes:
    data = _png()
    return data[:33] + hostile.png_chunk(b"ZZZZ", b"") + data[33:]


STRUCTURE_CASES = {
    "png crc": (lambda: _corrupt_crc(_png()), "fails its CRC check"),
    "png animated": (_animated_png, "animated PNG"),
    "png without IEND": (_no_iend, "PNG file is truncated"),
    "png unknown critical chunk": (_unknown_critical, "unknown critical chunk ZZZZ"),
    "webp animated": (_animated_webp, "animated WebP"),
    "jpeg arithmetic": (_arithmetic_jpeg, "arithmetic-coded JPEG"),
    "jpeg two frames": (_two_frames, "more than one frame"),
    "jpeg without EOI": (lambda: _jpeg()[:-2], "JPEG file is truncated"),
    "jpeg scan without data": (
        lambda: (
            _jpeg()[: _jpeg().index(b"\xff\xda")] + b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11"
            b"\x03\x11\x00\x3f\x00\xff\xd9"
        ),
        "a scan without data",
    ),
}


@pytest.mark.parametrize("case", STRUCTURE_CASES, ids=list(STRUCTURE_CASES))
def test_structure_rules_give_specific_messages(case: str) -> None:
    make, fragment = STRUCTURE_CASES[case]
    refused(make(), fragment)


def test_bytes_after_the_first_eoi_are_not_decoded() -> None:
    """Phones append a second picture (MPO) or a trailer after the first EOI: still accepted."""
    first = hostile.encode(hostile.photo_array((48, 32)), "JPEG")
    second = hostile.encode(hostile.photo_array((480, 320)), "JPEG")
    for data in (first + second, first + b"\x00" * 100):
        assert decoding.decode_photo(data, LIMITS).size == (48, 32)


def test_multi_picture_jpeg_decodes_its_first_picture() -> None:
    frames = [hostile.photo_array((48, 32), seed) for seed in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    assert decoding.decode_photo(buf.getvalue(), LIMITS).size == (48, 32)
