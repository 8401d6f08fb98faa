"""Unit tests of inpaint.photo.imaging: decoding with limits, mask rules, region planning,
paste-back.

Images are built in memory. Photos whose pixels are compared exactly are random noise saved as
PNG, so any change to a pixel that should be untouched is caught.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from inpaint.config import Settings
from inpaint.errors import InvalidImageError, MaskMismatchError
from inpaint.photo import decoding, imaging
from inpaint.photo.imaging import ImageLimits, Prepared, Region

LIMITS = ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=50_000_000)
RNG_SEED = 1234


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    if fmt == "PNG":
        options.setdefault("compress_level", 1)  # noise does not compress; keep tests fast
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = RNG_SEED) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def chebyshev_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Independent reference: square dilation of a boolean array by shifting rows, then columns."""
    h, w = mask.shape
    rows = np.pad(mask, ((0, 0), (radius, radius)))
    out = np.zeros_like(mask)
    for dx in range(2 * radius + 1):
        out |= rows[:, dx : dx + w]
    cols = np.pad(out, ((radius, radius), (0, 0)))
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        out |= cols[dy : dy + h, :]
    return out


def prepared_for(
    photo: Image.Image,
    mask: Image.Image,
    *,
    work_megapixels: float = 1.0,
    margin: float = 0.5,
) -> Prepared:
    return imaging.prepare(
        encode(photo),
        encode(mask),
        limits=LIMITS,
        work_megapixels=work_megapixels,
        margin=margin,
    )


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(np.int16)


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------


def test_limits_from_settings() -> None:
    s = Settings(max_input_bytes=123_456, max_input_pixels=7_000_000)
    assert ImageLimits.from_settings(s) == ImageLimits(max_bytes=123_456, max_pixels=7_000_000)


# --------------------------------------------------------------------------------------------
# decode_photo: formats and modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_allowed_format_is_sniffed_from_bytes(fmt: str) -> None:
    """No file name is involved: a PNG uploaded as photo.jpg decodes like any PNG."""
    src = Image.new("RGB", (40, 30), (200, 40, 10))
    photo = imaging.decode_photo(encode(src, fmt), LIMITS)
    assert photo.mode == "RGB"
    assert photo.size == (40, 30)
    assert np.abs(arr(photo)[15, 20] - np.array([200, 40, 10])).max() <= 6


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_by_their_signature(fmt: str) -> None:
    """Only JPEG, PNG and WebP reach a decoder (``upload_checks.ALLOWED_FORMATS``)."""
    with pytest.raises(InvalidImageError, match=f"{fmt} images are not supported"):
        imaging.decode_photo(encode(Image.new("RGB", (40, 30), (200, 40, 10)), fmt), LIMITS)


def _rgba() -> Image.Image:
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent black
    im.paste((200, 0, 0, 255), (0, 0, 16, 32))  # opaque red left half
    im.paste((0, 0, 0, 128), (16, 16, 32, 32))  # half-transparent black
    return im


def _la() -> Image.Image:
    im = Image.new("LA", (32, 32), (0, 0))
    im.paste((50, 255), (0, 0, 16, 32))
    return im


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.paste(1, (0, 0, 16, 32))
    if transparent:
        im.info["transparency"] = 0
    return im


def _cmyk() -> Image.Image:
    im = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # no ink: white
    im.paste((255, 0, 0, 0), (0, 0, 16, 32))  # full cyan
    return im


def _i16() -> Image.Image:
    a = np.zeros((32, 32), np.uint16)
    a[:, :16] = 65535
    a[:16, 16:] = 1000  # would clip to 255 if not scaled
    a[16:, 16:] = 32896
    return Image.fromarray(a)


def _bilevel() -> Image.Image:
    im = Image.new("1", (32, 32), 0)
    im.paste(1, (0, 0, 16, 32))
    return im


# (factory, format, [(xy, expected RGB)], tolerance)
MODE_CASES: dict[str, tuple[Callable[[], Image.Image], str, list, int]] = {
    "RGB": (lambda: Image.new("RGB", (32, 32), (10, 20, 30)), "PNG", [((5, 5), (10, 20, 30))], 0),
    "RGBA on white": (
        _rgba,
        "PNG",
        [((4, 4), (200, 0, 0)), ((24, 4), (255, 255, 255)), ((24, 24), (127, 127, 127))],
        1,
    ),
    "LA": (_la, "PNG", [((4, 4), (50, 50, 50)), ((24, 4), (255, 255, 255))], 0),
    "P": (lambda: _palette(False), "PNG", [((4, 4), (10, 200, 30)), ((24, 4), (0, 0, 0))], 0),
    "P transparency": (
        lambda: _palette(True),
        "PNG",
        [((4, 4), (10, 200, 30)), ((24, 4), (255, 255, 255))],
        0,
    ),
    "CMYK JPEG": (_cmyk, "JPEG", [((4, 4), (0, 255, 255)), ((24, 4), (255, 255, 255))], 8),
    "L": (lambda: Image.new("L", (32, 32), 77), "PNG", [((5, 5), (77, 77, 77))], 0),
    "I;16 PNG": (
        _i16,
        "PNG",
        [((4, 4), (255,) * 3), ((24, 4), (4,) * 3), ((24, 24), (128,) * 3)],
        0,
    ),
    "1": (_bilevel, "PNG", [((4, 4), (255,) * 3), ((24, 4), (0,) * 3)], 0),
}


@pytest.mark.parametrize("case", MODE_CASES, ids=list(MODE_CASES))
def test_every_mode_becomes_rgb(case: str) -> None:
    factory, fmt, expectations, tolerance = MODE_CASES[case]
    src = factory()
    data = encode(src, fmt)
    assert Image.open(io.BytesIO(data)).mode == src.mode or fmt == "JPEG"
    photo = imaging.decode_photo(data, LIMITS)
    assert photo.mode == "RGB"
    assert photo.size == (32, 32)
    for (x, y), expected in expectations:
        got = arr(photo)[y, x]
        assert np.abs(got - np.array(expected)).max() <= tolerance, (case, (x, y), got)


def test_rgb_icc_profile_is_kept_and_embedded_in_outputs() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = imaging.decode_photo(encode(noise((64, 48)), "PNG", icc_profile=srgb), LIMITS)
    assert photo.info == {"icc_profile": srgb}
    edited, preview = imaging.encode_outputs(photo)
    assert Image.open(io.BytesIO(edited)).info.get("icc_profile") == srgb
    assert Image.open(io.BytesIO(preview)).info.get("icc_profile") == srgb


# --------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------


def _oriented_jpeg(orientation: int) -> bytes:
    """A stored 64x32 grey image with a red 16x16 block in its top-left corner."""
    im = Image.new("RGB", (64, 32), (128, 128, 128))
    im.paste((255, 0, 0), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PetCam"  # Make: proves other EXIF is dropped too
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (1, (64, 32), (8, 8)),
        (3, (64, 32), (56, 24)),  # rotated 180
        (6, (32, 64), (24, 8)),  # displayed rotated 90 clockwise: top-left -> top-right
        (8, (32, 64), (8, 56)),  # rotated 90 counter-clockwise: top-left -> bottom-left
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_at: tuple[int, int]
) -> None:
    photo = imaging.decode_photo(_oriented_jpeg(orientation), LIMITS)
    assert photo.size == size
    x, y = red_at
    r, g, b = photo.getpixel((x, y))
    assert r > 200 and g < 60 and b < 60
    assert "exif" not in photo.info
    edited, _ = imaging.encode_outputs(photo)
    out = Image.open(io.BytesIO(edited))
    assert out.size == size
    assert dict(out.getexif()) == {}  # no stale orientation, no camera data


def test_mask_is_matched_against_the_displayed_orientation() -> None:
    photo = _oriented_jpeg(6)  # displayed 32x64
    displayed = encode(rect_mask((32, 64), (0, 0, 16, 16)))
    prepared = imaging.prepare(photo, displayed, limits=LIMITS, work_megapixels=0.25, margin=0.5)
    assert prepared.mask.size == (32, 64)
    stored = encode(rect_mask((64, 32), (0, 0, 16, 16)))
    with pytest.raises(MaskMismatchError) as info:
        imaging.prepare(photo, stored, limits=LIMITS, work_megapixels=0.25, margin=0.5)
    assert "64x32" in info.value.message and "32x64" in info.value.message
    assert "orientation" in info.value.message


# --------------------------------------------------------------------------------------------
# decode errors
# --------------------------------------------------------------------------------------------


def _jpeg_bytes() -> bytes:
    return encode(noise((200, 150)), "JPEG", quality=90)


def _png_bytes() -> bytes:
    return encode(noise((200, 150)))


ERROR_CASES: dict[str, tuple[Callable[[], bytes], ImageLimits, list[str]]] = {
    "zero bytes": (lambda: b"", LIMITS, ["is empty (0 bytes)"]),
    "html": (
        lambda: b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
        LIMITS,
        ["could not be read", "HTML"],
    ),
    "pdf": (lambda: b"%PDF-1.7\n" + b"x" * 100, LIMITS, ["PDF"]),
    "heic": (lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, LIMITS, ["HEIC"]),
    "random bytes": (
        lambda: bytes(range(256)) * 4,
        LIMITS,
        ["not an image in a supported format", "JPEG", "PNG"],
    ),
    "icon (not allowed)": (
        lambda: encode(noise((32, 32)), "ICO"),
        LIMITS,
        ["not an image in a supported format"],
    ),
    "truncated jpeg": (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], LIMITS, ["truncated"]),
    "truncated png": (lambda: _png_bytes()[: len(_png_bytes()) // 2], LIMITS, ["truncated"]),
    "truncated webp": (
        lambda: encode(noise((200, 150)), "WEBP")[:2000],
        LIMITS,
        ["truncated"],
    ),
    "header cut short": (lambda: _png_bytes()[:30], LIMITS, ["PNG", "truncated"]),
    "too many bytes": (
        _jpeg_bytes,
        ImageLimits(max_bytes=2048, max_pixels=50_000_000),
        ["above the limit of 2 KB"],
    ),
    "pil bomb (100000x100000)": (
        lambda: png_header(100_000, 100_000),
        LIMITS,
        ["10000 MP", "above the limit of 50 MP"],
    ),
    "header over our limit": (
        lambda: png_header(8000, 8000),
        LIMITS,
        ["8000x8000 = 64 MP, above the limit of 50 MP"],
    ),
    "small pixel limit": (
        _png_bytes,
        ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=10_000),
        ["200x150 = 0.03 MP, above the limit of 0.01 MP"],
    ),
    "too small": (lambda: encode(noise((10, 40))), LIMITS, ["10x40", "at least 16 pixels"]),
    "extreme aspect 20000x20": (
        lambda: encode(Image.new("L", (20000, 20), 90)),
        LIMITS,
        ["20000x20", "aspect ratio of 1000:1", "16:1"],
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_unusable_photo_bytes_give_a_specific_message(case: str) -> None:
    make, limits, fragments = ERROR_CASES[case]
    with pytest.raises(InvalidImageError) as info:
        imaging.decode_photo(make(), limits)
    message = info.value.message
    assert message.startswith("The photo "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert info.value.code == "invalid_image"


@pytest.mark.parametrize("case", ["zero bytes", "html", "truncated png", "header over our limit"])
def test_mask_errors_name_the_mask(case: str) -> None:
    make, limits, fragments = ERROR_CASES[case]
    with pytest.raises(InvalidImageError) as info:
        imaging.decode_mask(make(), (200, 150), limits)
    assert info.value.message.startswith("The mask "), info.value.message
    assert all(fragment in info.value.message for fragment in fragments)


def test_pixel_limit_does_not_depend_on_pils_global(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PIL's own bomb check disabled, the header check still rejects before decoding."""
    monkeypatch.setattr(decoding, "ISOLATED", False)  # the patch below is this process's
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InvalidImageError, match=r"100000x100000 = 10000 MP"):
        imaging.decode_photo(png_header(100_000, 100_000), LIMITS)


@pytest.mark.parametrize(
    ("size", "ok"),
    [((16, 16), True), ((15, 100), False), ((1600, 100), True), ((100, 1601), False)],
)
def test_size_and_aspect_bounds(size: tuple[int, int], ok: bool) -> None:
    data = encode(Image.new("RGB", size, (1, 2, 3)))
    if ok:
        assert imaging.decode_photo(data, LIMITS).size == size
    else:
        with pytest.raises(InvalidImageError):
            imaging.decode_photo(data, LIMITS)


def test_extreme_but_allowed_aspect_goes_through_the_whole_pipeline() -> None:
    photo = noise((1600, 100))
    mask = rect_mask((1600, 100), (0, 20, 1600, 80))  # full-width mask
    prepared = prepared_for(photo, mask)
    assert prepared.region is not None
    w, h = prepared.region.work_size
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1_000_000
    assert w / h == pytest.approx(16, rel=0.1)
    generated = noise(prepared.region.work_size, seed=9)
    edited = imaging.composite(prepared, generated, dilate_px=4, feather_px=8)
    assert edited.size == (1600, 100)


# --------------------------------------------------------------------------------------------
# decode_mask
# --------------------------------------------------------------------------------------------

PHOTO_SIZE = (64, 48)
STROKE = (16, 8, 32, 24)  # (left, top, right, bottom)


def _expected_stroke() -> np.ndarray:
    expected = np.zeros((PHOTO_SIZE[1], PHOTO_SIZE[0]), np.uint8)
    expected[STROKE[1] : STROKE[3], STROKE[0] : STROKE[2]] = 255
    return expected


def _mask_rgba_transparent_black_strokes() -> Image.Image:
    im = Image.new("RGBA", PHOTO_SIZE, (255, 255, 255, 0))  # white but transparent canvas
    im.paste((0, 0, 0, 255), STROKE)  # opaque *black* strokes: alpha decides
    return im


def _mask_rgba_opaque() -> Image.Image:
    im = Image.new("RGBA", PHOTO_SIZE, (0, 0, 0, 255))
    im.paste((255, 255, 255, 255), STROKE)  # uniform alpha: luminance decides
    return im


def _mask_la() -> Image.Image:
    im = Image.new("LA", PHOTO_SIZE, (255, 0))
    im.paste((0, 255), STROKE)
    return im


def _mask_palette(transparent: bool) -> Image.Image:
    im = Image.new("P", PHOTO_SIZE, 0)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.paste(1, STROKE)
    if transparent:
        im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # strokes black, canvas white
        im.info["transparency"] = 0
    return im


def _mask_i16() -> Image.Image:
    a = np.full((PHOTO_SIZE[1], PHOTO_SIZE[0]), 20000, np.uint16)  # below 50 % of 16 bits
    a[STROKE[1] : STROKE[3], STROKE[0] : STROKE[2]] = 40000
    return Image.fromarray(a)


def _mask_threshold() -> Image.Image:
    im = Image.new("L", PHOTO_SIZE, 127)  # just below 50 %
    im.paste(128, STROKE)  # at 50 %
    return im


def _mask_bilevel() -> Image.Image:
    im = Image.new("1", PHOTO_SIZE, 0)
    im.paste(1, STROKE)
    return im


def _mask_rgb() -> Image.Image:
    im = Image.new("RGB", PHOTO_SIZE, (0, 0, 0))
    im.paste((255, 255, 255), STROKE)
    return im


MASK_CASES: dict[str, tuple[Callable[[], Image.Image], str]] = {
    "L binarised at 50%": (_mask_threshold, "PNG"),
    "RGB luminance": (_mask_rgb, "PNG"),
    "RGB JPEG (lossy)": (_mask_rgb, "JPEG"),
    "RGBA alpha strokes": (_mask_rgba_transparent_black_strokes, "PNG"),
    "RGBA opaque -> luminance": (_mask_rgba_opaque, "PNG"),
    "LA alpha": (_mask_la, "PNG"),
    "P luminance": (lambda: _mask_palette(False), "PNG"),
    "P transparency": (lambda: _mask_palette(True), "PNG"),
    "I;16": (_mask_i16, "PNG"),
    "1": (_mask_bilevel, "PNG"),
}


@pytest.mark.parametrize("case", MASK_CASES, ids=list(MASK_CASES))
def test_mask_modes_and_alpha_rule(case: str) -> None:
    factory, fmt = MASK_CASES[case]
    mask = imaging.decode_mask(encode(factory(), fmt), PHOTO_SIZE, LIMITS)
    assert mask.mode == "L"
    assert mask.size == PHOTO_SIZE
    got = np.asarray(mask)
    assert set(np.unique(got)) <= {0, 255}
    assert np.array_equal(got, _expected_stroke()), case


def test_fully_transparent_mask_is_empty() -> None:
    """Alpha that is not uniformly opaque is the mask, even when the hidden RGB is white."""
    data = encode(Image.new("RGBA", PHOTO_SIZE, (255, 255, 255, 0)))
    assert imaging.decode_mask(data, PHOTO_SIZE, LIMITS).getbbox() is None


@pytest.mark.parametrize(
    ("photo_size", "mask_size"),
    [
        ((64, 48), (32, 24)),  # half size
        ((64, 48), (128, 96)),  # double size
        ((100, 75), (67, 50)),  # 66.67 rounded up: 1 px of rounding
        ((1000, 750), (995, 750)),  # 0.5 % off
    ],
)
def test_mask_of_same_aspect_is_resized(
    photo_size: tuple[int, int], mask_size: tuple[int, int]
) -> None:
    mw, mh = mask_size
    stroke = (mw // 4, mh // 4, mw // 2, mh // 2)
    mask = imaging.decode_mask(encode(rect_mask(mask_size, stroke)), photo_size, LIMITS)
    assert mask.size == photo_size
    got = np.asarray(mask)
    assert set(np.unique(got)) <= {0, 255}
    left, top, right, bottom = mask.getbbox()
    pw, ph = photo_size
    assert abs(left - pw / 4) <= 2 and abs(top - ph / 4) <= 2
    assert abs(right - pw / 2) <= 2 and abs(bottom - ph / 2) <= 2


@pytest.mark.parametrize(
    ("photo_size", "mask_size"), [((64, 48), (64, 64)), ((1000, 750), (970, 750))]
)
def test_mask_of_other_aspect_is_rejected(
    photo_size: tuple[int, int], mask_size: tuple[int, int]
) -> None:
    with pytest.raises(MaskMismatchError) as info:
        imaging.decode_mask(encode(Image.new("L", mask_size, 255)), photo_size, LIMITS)
    message = info.value.message
    assert "{}x{}".format(*mask_size) in message
    assert "{}x{}".format(*photo_size) in message
    assert info.value.code == "mask_mismatch"


# decode_inputs: the two decodings side by side, same results and the same first error

GOOD_PHOTO, GOOD_MASK = encode(noise((200, 150)), "JPEG"), encode(Image.new("L", (100, 75), 255))
HTML = b"<html><body>not an image</body></html>"


@pytest.mark.parametrize(
    ("photo", "mask", "error"),
    [
        (GOOD_PHOTO, GOOD_MASK, None),
        (HTML, GOOD_MASK, "The photo "),
        (GOOD_PHOTO, HTML, "The mask "),
        (HTML, HTML, "The photo "),  # both bad: the photo's error, as when decoded in turn
        (GOOD_PHOTO, encode(Image.new("L", (64, 64), 255)), "mask_mismatch"),
    ],
    ids=["both good", "photo bad", "mask bad", "both bad", "mask of another aspect"],
)
def test_decode_inputs_is_decode_photo_then_decode_mask(
    photo: bytes, mask: bytes, error: str | None
) -> None:
    if error is None:
        original, binary = imaging.decode_inputs(photo, mask, LIMITS)
        expected = imaging.decode_photo(photo, LIMITS)
        assert original.tobytes() == expected.tobytes()
        assert binary.tobytes() == imaging.decode_mask(mask, expected.size, LIMITS).tobytes()
        return
    with pytest.raises((InvalidImageError, MaskMismatchError)) as info:
        imaging.decode_inputs(photo, mask, LIMITS)
    assert info.value.message.startswith(error) or info.value.code == error, info.value.message


# --------------------------------------------------------------------------------------------
# working size and region planning
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(4000, 3000), (3000, 4000), (600, 600), (100, 100), (1600, 100), (16, 16), (777, 333)]
)
@pytest.mark.parametrize("megapixels", [0.5, 1.0, 2.0])
def test_work_size_is_multiple_of_16_within_budget(
    size: tuple[int, int], megapixels: float
) -> None:
    w, h = imaging.work_size_for(size, megapixels)
    assert w % 16 == 0 and h % 16 == 0
    assert w >= 16 and h >= 16
    budget = megapixels * 1e6
    assert w * h <= budget
    assert w * h >= 0.85 * budget  # the budget is used, small inputs are up-scaled
    assert (w / h) / (size[0] / size[1]) == pytest.approx(1.0, abs=0.07)


def _big_mask(box: tuple[int, int, int, int], size: tuple[int, int] = (4000, 3000)) -> Image.Image:
    return rect_mask(size, box)


def _contains(outer: tuple[int, ...], inner: tuple[int, ...]) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


def test_small_mask_is_cropped_with_context_and_upscaled() -> None:
    bbox = (2500, 1200, 2800, 1500)
    region = imaging.plan_region(_big_mask(bbox), work_megapixels=1.0, margin=0.5)
    assert region is not None
    left, top, right, bottom = region.box
    assert _contains(region.box, bbox)
    # margin: half the 300 px bbox on every side (not clamped here)
    assert bbox[0] - left >= 150 and top <= bbox[1] - 150
    assert right - bbox[2] >= 150 and bottom - bbox[3] >= 150
    cw, ch = region.size
    assert cw * ch < 0.5 * 4000 * 3000
    ww, wh = region.work_size
    assert ww > cw and wh > ch  # up-scaled: more detail where it matters
    assert ww % 16 == 0 and wh % 16 == 0 and ww * wh <= 1_000_000


def test_large_mask_uses_the_whole_photo() -> None:
    region = imaging.plan_region(_big_mask((400, 300, 3600, 2700)), work_megapixels=1.0, margin=0.5)
    assert region == Region(box=(0, 0, 4000, 3000), work_size=(1152, 864))


@pytest.mark.parametrize(
    ("bbox", "margin"),
    [
        ((0, 0, 50, 50), 0.5),  # corner: crop shifted inside the photo
        ((3950, 2950, 4000, 3000), 0.5),  # opposite corner
        ((1000, 1500, 2000, 1504), 0.5),  # thin horizontal stroke
        ((2000, 100, 2003, 900), 0.0),  # thin vertical stroke, no margin
        ((1990, 1490, 2010, 1510), 0.0),  # tiny dot
    ],
)
def test_crop_is_clamped_contains_the_mask_and_has_sane_shape(
    bbox: tuple[int, int, int, int], margin: float
) -> None:
    region = imaging.plan_region(_big_mask(bbox), work_megapixels=1.0, margin=margin)
    assert region is not None
    left, top, right, bottom = region.box
    assert 0 <= left < right <= 4000 and 0 <= top < bottom <= 3000
    assert _contains(region.box, bbox)
    cw, ch = region.size
    assert max(cw, ch) / min(cw, ch) <= imaging.MAX_CROP_ASPECT + 0.01
    # minimum context wherever the photo allows it
    if bbox[0] >= imaging.MIN_CONTEXT_PX:
        assert bbox[0] - left >= imaging.MIN_CONTEXT_PX
    if bbox[1] >= imaging.MIN_CONTEXT_PX:
        assert bbox[1] - top >= imaging.MIN_CONTEXT_PX
    # up-scaled at most MAX_UPSCALE times
    assert region.work_size[0] / cw <= imaging.MAX_UPSCALE + 0.01


def test_band_px_widens_the_context() -> None:
    bbox = (1990, 1490, 2010, 1510)
    region = imaging.plan_region(_big_mask(bbox), work_megapixels=1.0, margin=0.0, band_px=400)
    assert region is not None
    assert bbox[0] - region.box[0] >= 400 and region.box[2] - bbox[2] >= 400


def test_empty_mask_plans_nothing() -> None:
    assert imaging.plan_region(Image.new("L", (64, 48)), work_megapixels=1.0, margin=0.5) is None


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def test_prepare_crop_builds_model_inputs() -> None:
    photo = noise((2000, 1500))
    bbox = (1200, 600, 1350, 750)
    prepared = prepared_for(photo, rect_mask((2000, 1500), bbox))
    assert not prepared.empty
    region = prepared.region
    assert region is not None and _contains(region.box, bbox)
    assert np.array_equal(np.asarray(prepared.original), np.asarray(photo))
    assert prepared.model_image is not None and prepared.model_mask is not None
    assert prepared.model_image.mode == "RGB" and prepared.model_image.size == region.work_size
    assert prepared.model_mask.mode == "L" and prepared.model_mask.size == region.work_size
    model_mask = np.asarray(prepared.model_mask)
    assert set(np.unique(model_mask)) == {0, 255}
    # the model mask covers the mask, mapped into work coordinates
    sx = region.work_size[0] / region.size[0]
    sy = region.work_size[1] / region.size[1]
    x0, y0 = (bbox[0] - region.box[0]) * sx, (bbox[1] - region.box[1]) * sy
    x1, y1 = (bbox[2] - region.box[0]) * sx, (bbox[3] - region.box[1]) * sy
    assert model_mask[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].min() == 255
    mx0, _, _, my1 = prepared.model_mask.getbbox()
    assert abs(mx0 - x0) <= 2 and abs(my1 - y1) <= 2
    # the model image shows the crop (compare against an independent resize)
    reference = photo.crop(region.box).resize(region.work_size, Image.Resampling.BICUBIC)
    assert np.abs(arr(prepared.model_image) - arr(reference)).mean() < 8


def test_prepare_empty_mask() -> None:
    prepared = prepared_for(noise((64, 48)), Image.new("L", (64, 48), 0))
    assert prepared.empty
    assert prepared.region is None and prepared.model_image is None
    assert prepared.model_mask is None
    edited = imaging.composite(prepared, noise((64, 48)), dilate_px=4, feather_px=8)
    assert np.array_equal(np.asarray(edited), np.asarray(prepared.original))


def test_prepare_full_mask() -> None:
    photo = noise((320, 240))
    prepared = prepared_for(photo, Image.new("L", (320, 240), 255))
    assert prepared.region == Region(box=(0, 0, 320, 240), work_size=(1152, 864))
    assert prepared.model_mask is not None
    assert np.asarray(prepared.model_mask).min() == 255
    generated = noise((1152, 864), seed=5)
    edited = imaging.composite(prepared, generated, dilate_px=4, feather_px=8)
    expected = generated.resize((320, 240), Image.Resampling.LANCZOS)
    assert np.abs(arr(edited) - arr(expected)).max() <= 2  # nothing of the original is left


# --------------------------------------------------------------------------------------------
# paste-back
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dilate_px", "feather_px"), [(4, 8), (0, 0), (3, 5), (10, 0), (0, 7)])
def test_blend_alpha_profile_is_in_original_pixels(dilate_px: int, feather_px: int) -> None:
    mask = rect_mask((200, 100), (80, 0, 120, 100))  # a vertical band: edges at x=80, x=120
    alpha = np.asarray(imaging.blend_alpha(mask, dilate_px=dilate_px, feather_px=feather_px))
    row = alpha[50].astype(int)
    reach = imaging.band_reach(dilate_px, feather_px)
    solid = dilate_px + feather_px % 2
    for distance in range(0, 60):
        x = 119 + distance  # distance past the right edge of the mask (0 = inside)
        if distance <= solid:
            assert row[x] == 255, (distance, row[x])
        elif distance > reach:
            assert row[x] == 0, (distance, row[x])
    ramp = row[119 : 119 + reach + 2]
    assert np.all(np.diff(ramp) <= 0)  # monotone fall-off
    if feather_px >= 2:
        assert 0 < row[119 + solid + feather_px // 2] < 255  # a real feather, not a hard edge


COMPOSITE_CASES = {
    # name: (photo size, mask shape, mask box, work megapixels)
    "full, up-scaled work": ((320, 240), "rect", (40, 30, 280, 210), 1.0),
    "full, down-scaled work": ((2000, 1500), "rect", (200, 150, 1800, 1350), 0.5),
    "full, ellipse": ((640, 480), "ellipse", (60, 40, 600, 440), 1.0),
    "crop, up-scaled work": ((2000, 1500), "rect", (900, 700, 1000, 780), 1.0),
    "crop, ellipse": ((2000, 1500), "ellipse", (1300, 200, 1500, 330), 1.0),
    "crop at the border": ((2000, 1500), "rect", (0, 1400, 120, 1500), 1.0),
}


def _shape_mask(size: tuple[int, int], shape: str, box: tuple[int, int, int, int]) -> Image.Image:
    if shape == "rect":
        return rect_mask(size, box)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask


@pytest.mark.parametrize("case", COMPOSITE_CASES, ids=list(COMPOSITE_CASES))
@pytest.mark.parametrize(("dilate_px", "feather_px"), [(4, 8), (0, 0), (6, 3)])
def test_composite_keeps_everything_outside_the_band_bit_identical(
    case: str, dilate_px: int, feather_px: int
) -> None:
    size, shape, box, megapixels = COMPOSITE_CASES[case]
    photo = noise(size)
    mask = _shape_mask(size, shape, box)
    prepared = prepared_for(photo, mask, work_megapixels=megapixels)
    region = prepared.region
    assert region is not None
    if case.startswith("crop"):
        assert region.size[0] * region.size[1] < size[0] * size[1] / 2
    before = np.asarray(prepared.original).copy()
    generated = noise(region.work_size, seed=77)
    edited = imaging.composite(prepared, generated, dilate_px=dilate_px, feather_px=feather_px)

    assert edited.size == size and edited.mode == "RGB"
    assert np.array_equal(np.asarray(prepared.original), before)  # original untouched
    got = np.asarray(edited).astype(np.int16)
    original = np.asarray(photo).astype(np.int16)
    reach = imaging.band_reach(dilate_px, feather_px)
    masked = np.asarray(mask) > 0
    band = chebyshev_dilate(masked, reach)
    assert np.array_equal(got[~band], original[~band])  # bit-identical outside the band

    # inside the (dilated) mask: entirely the generated image, mapped onto the crop box
    upscale = region.work_size[0] < region.size[0]
    resample = Image.Resampling.BICUBIC if upscale else Image.Resampling.LANCZOS
    left, top, right, bottom = region.box
    mapped = np.zeros_like(original)
    mapped[top:bottom, left:right] = np.asarray(generated.resize(region.size, resample))
    inner = chebyshev_dilate(masked, dilate_px)
    diff = np.abs(got[inner] - mapped[inner])
    assert np.percentile(diff, 99) <= 1 and diff.max() <= 8

    # the band between: a blend of the two, and really a mix where there is a feather
    ring = band & ~inner
    if not ring.any():
        return
    low = np.minimum(original[ring], mapped[ring]) - 8
    high = np.maximum(original[ring], mapped[ring]) + 8
    assert np.all((got[ring] >= low) & (got[ring] <= high))
    if feather_px:
        mixed = np.any(
            (np.abs(got[ring] - original[ring]) > 1) & (np.abs(got[ring] - mapped[ring]) > 1),
            axis=1,
        )
        assert mixed.mean() > 0.3, mixed.mean()


def test_composite_crop_region_pastes_only_near_the_mask() -> None:
    """A small mask on a big photo changes only pixels near the mask."""
    size = (2000, 1500)
    bbox = (1200, 300, 1260, 340)
    prepared = prepared_for(noise(size), rect_mask(size, bbox))
    assert prepared.region is not None
    assert _contains(prepared.region.box, bbox)
    edited = imaging.composite(
        prepared, noise(prepared.region.work_size, seed=3), dilate_px=4, feather_px=8
    )
    changed = np.any(np.asarray(edited) != np.asarray(prepared.original), axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= bbox[0] - 12 and xs.max() < bbox[2] + 12
    assert ys.min() >= bbox[1] - 12 and ys.max() < bbox[3] + 12
    assert changed[bbox[1] : bbox[3], bbox[0] : bbox[2]].mean() > 0.9


def test_composite_accepts_generated_of_another_size_and_mode() -> None:
    size = (320, 240)
    prepared = prepared_for(noise(size), rect_mask(size, (100, 100, 200, 200)))
    generated = Image.new("RGBA", (500, 500), (0, 255, 0, 255))
    edited = imaging.composite(prepared, generated, dilate_px=2, feather_px=2)
    assert edited.getpixel((150, 150)) == (0, 255, 0)
    assert edited.getpixel((10, 10)) == prepared.original.getpixel((10, 10))


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def _quantization(data: bytes) -> dict:
    return Image.open(io.BytesIO(data)).quantization


@pytest.mark.parametrize(
    ("size", "preview_size"),
    [
        ((4000, 3000), (512, 384)),
        ((600, 1200), (256, 512)),
        ((1600, 100), (512, 32)),
        ((300, 200), (300, 200)),  # never up-scaled
        ((512, 100), (512, 100)),
    ],
)
def test_outputs_are_jpegs_of_the_right_size_and_quality(
    size: tuple[int, int], preview_size: tuple[int, int]
) -> None:
    edited = Image.new("RGB", size, (90, 140, 200))
    ImageDraw.Draw(edited).ellipse((0, 0, size[0] // 2, size[1] // 2), fill=(250, 20, 20))
    full, preview = imaging.encode_outputs(edited)
    for data, expected_size in ((full, size), (preview, preview_size)):
        assert data[:3] == b"\xff\xd8\xff"
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.size == expected_size
    assert imaging.make_preview(edited).size == preview_size
    reference = Image.new("RGB", (64, 64))
    assert _quantization(full) == _quantization(encode(reference, "JPEG", quality=95))
    assert _quantization(preview) == _quantization(encode(reference, "JPEG", quality=85))
    assert np.abs(arr(Image.open(io.BytesIO(full))) - arr(edited)).mean() < 2


def test_encode_converts_non_rgb() -> None:
    full, preview = imaging.encode_outputs(Image.new("L", (40, 30), 128))
    assert Image.open(io.BytesIO(full)).mode == "RGB"
    assert Image.open(io.BytesIO(preview)).size == (40, 30)


@pytest.mark.parametrize("radius", [1, 7, 200, 256])
def test_dilation_reaches_exactly_radius_even_for_a_lone_pixel(radius: int) -> None:
    """The box-blur dilation must not lose a single pixel at large radii (rounding)."""
    mask = Image.new("L", (600, 560), 0)
    mask.putpixel((300, 280), 255)
    mask.putpixel((3, 550), 255)  # near the border too
    alpha = np.asarray(imaging.blend_alpha(mask, dilate_px=radius, feather_px=0))
    expected = chebyshev_dilate(np.asarray(mask) > 0, radius)
    assert set(np.unique(alpha)) <= {0, 255}
    assert np.array_equal(alpha > 0, expected)
