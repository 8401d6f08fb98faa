"""Everything between the uploaded bytes and the model, and back: decode, plan, paste, encode.

Pure PIL + numpy (no torch), so it is cheap to import, to test and to benchmark on any machine.

The pipeline, and why each step exists:

1. ``decode_photo`` / ``decode_mask`` turn untrusted bytes into a known shape: an RGB photo in
   its *displayed* orientation and a binary ``L`` mask of exactly the photo's size. Every way the
   bytes can be unusable becomes an :class:`~inpaint.errors.InvalidImageError` (or a
   :class:`~inpaint.errors.MaskMismatchError`) whose message names the input and the problem,
   because that message is shown to the user as is.
2. ``plan_region`` chooses what the model sees: for a small mask on a big photo only a crop
   around the mask (with context), at a working resolution of about ``work_megapixels``. The
   model's cost depends on the working resolution only, so a crop spends that budget where the
   edit is (a 300 px blob in a 12 MP photo is *up*-scaled, not lost in a 1 MP downscale).
3. ``composite`` pastes the model output back through a dilated, feathered mask. Every pixel
   outside that band is bit-identical to the decoded original: the model's VAE round trip
   slightly changes colours everywhere, and we must not degrade what the user did not ask to edit.
4. ``encode_outputs`` writes the full-resolution edit (JPEG q95) and a 512 px preview (q85).

Conventions: sizes are ``(width, height)`` and boxes ``(left, top, right, bottom)`` in pixels of
the decoded (EXIF-rotated) original, like PIL's.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import (
    BmpImagePlugin,  # noqa: F401  (imported to register the decoders ALLOWED_FORMATS names)
    GifImagePlugin,  # noqa: F401
    Image,
    ImageCms,
    ImageFilter,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
    features,
)

from inpaint.errors import InvalidImageError, MaskMismatchError

if TYPE_CHECKING:
    from inpaint.config import Settings

log = logging.getLogger(__name__)

#: Formats we decode. An allow-list rather than everything PIL knows: exotic decoders (EPS runs
#: Ghostscript, PSD, ICO, ...) are attack surface that no pet photo needs. Phones' multi-picture
#: JPEGs (MPO) open through the JPEG decoder. The plugins are imported above because PIL loads
#: most of them lazily and ``Image.open(formats=...)`` needs them registered; AVIF only where
#: this PIL build has it.
if features.check("avif"):
    from PIL import AvifImagePlugin  # noqa: F401
ALLOWED_FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN
)
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
#: Working sizes are multiples of this (FLUX: VAE factor 8 x patch size 2).
WORK_MULTIPLE = 16
#: Minimum context around the mask's bounding box in a crop, in original pixels. Also keeps the
#: paste-back band (dilate + feather, 12 px by default) inside the crop.
MIN_CONTEXT_PX = 64
#: A crop is enlarged until the model input is at most this many times up-scaled: a tiny mask
#: still gets enough surroundings for the model to understand the scene.
MAX_UPSCALE = 4.0
#: A crop is widened (or heightened) to at most this aspect ratio, within the photo.
MAX_CROP_ASPECT = 2.0
#: When the crop would cover more than this fraction of the photo, the whole photo is used: the
#: resolution gain would be small and the model sees the complete scene.
FULL_IMAGE_FRACTION = 0.5
#: Colour that transparent photo pixels are composited on (see ``decode_photo``).
TRANSPARENT_BACKGROUND = (255, 255, 255)
#: Preview: longest side in pixels, and JPEG qualities of the two outputs.
PREVIEW_SIDE = 512
EDITED_QUALITY = 95
PREVIEW_QUALITY = 85

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Leading bytes of the allowed formats, only to word the message for a file cut inside its header.
_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("GIF", b"GIF8"),
    ("WEBP", b"RIFF"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("BMP", b"BM"),
)
# point() lookup tables: binarise at 50 %, and "any coverage".
_BINARISE_LUT = [0] * 128 + [255] * 128
_NONZERO_LUT = [0] + [255] * 255
# One box-blur pass of radius r turns a lone 255 into 255 / (2r + 1), which must still round to
# at least 1 for the dilation threshold to see it; chunk larger dilations.
_MAX_DILATE_STEP = 200


@dataclass(frozen=True)
class ImageLimits:
    """Input limits: a byte size and a pixel count (checked from the header, before decoding)."""

    max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, s: Settings) -> ImageLimits:
        """The limits configured by ``INPAINT_MAX_INPUT_BYTES`` / ``INPAINT_MAX_INPUT_PIXELS``."""
        return cls(max_bytes=s.max_input_bytes, max_pixels=s.max_input_pixels)


@dataclass(frozen=True)
class Region:
    """The part of the photo the model sees.

    ``box`` is the crop ``(left, top, right, bottom)`` in original pixels (the whole photo when
    cropping would not pay); ``work_size`` the ``(w, h)`` it is resized to for the model, both
    multiples of 16. The crop is resized independently in x and y, so the aspect ratio may change
    by up to 16 px of rounding; the paste-back undoes exactly that resize.
    """

    box: tuple[int, int, int, int]
    work_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the crop box in original pixels."""
        left, top, right, bottom = self.box
        return right - left, bottom - top


@dataclass(frozen=True, eq=False)
class Prepared:
    """A decoded job, ready for the model (``eq=False``: images compare by identity)."""

    original: Image.Image
    mask: Image.Image
    region: Region | None
    model_image: Image.Image | None
    model_mask: Image.Image | None

    @property
    def empty(self) -> bool:
        """True when the mask has no white pixel: the caller skips the model."""
        return self.region is None


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
      32-bit/float greyscale are scaled to 8 bits (see ``_high_depth_to_l``), never clipped;
      CMYK goes through its embedded ICC profile when there is one.
    - The result's ``info`` holds only ``icc_profile`` (when it is an RGB profile), so outputs
      keep the photo's colour space (e.g. Display P3) but carry no EXIF (no GPS, no stale
      orientation tag).
    """
    im = _open(data, limits, "photo")
    icc = im.info.get("icc_profile")
    rgb = _to_rgb(im, icc)
    keep = icc is not None and im.mode != "CMYK" and _is_rgb_profile(icc)
    rgb.info = {"icc_profile": icc} if keep else {}
    return rgb


def decode_mask(data: bytes, size: tuple[int, int], limits: ImageLimits) -> Image.Image:
    """Decodes the mask into an ``L`` image of values 0/255 and exactly ``size``.

    White (255) means "repaint". The rule for which channel is the mask:

    - If the image has an alpha channel (RGBA, LA, PA, or a palette/tRNS transparency) and that
      alpha is not uniformly opaque, the alpha channel is the mask: painted strokes on a
      transparent canvas are what to repaint, whatever their colour.
    - Otherwise the luminance is the mask (white on black).

    16-bit, 32-bit and float masks are scaled to 8 bits like photos. The result is binarised at
    50 % (>= 128 -> 255).

    ``size`` is the photo's *displayed* size (after its EXIF rotation), and the mask is expected
    in that orientation (its own EXIF orientation, if any, is applied too). A mask of another
    size but the same aspect ratio (within 1 %, or 1 px of rounding) is resized (bilinear, then
    re-binarised); any other aspect ratio is a :class:`MaskMismatchError` naming both sizes.
    """
    im = _open(data, limits, "mask")
    gray = _mask_gray(im)
    if gray.size != size:
        _check_mask_aspect(gray.size, size)
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return gray.point(_BINARISE_LUT)


def _open(data: bytes, limits: ImageLimits, what: str) -> Image.Image:
    """Opens, checks and fully loads one input, and applies its EXIF orientation."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} data must be bytes, not {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImageError(f"The {what} is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(
            f"The {what} is {_format_bytes(len(data))}, above the limit of "
            f"{_format_bytes(limits.max_bytes)}."
        )
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise InvalidImageError(_bomb_message(what, e, limits)) from e
    except UnidentifiedImageError as e:
        raise InvalidImageError(f"The {what} could not be read: {_sniff(data)}.") from e
    except MemoryError:
        raise
    except Exception as e:  # PIL raises many types on malformed headers
        raise _unreadable(what, e, data) from e

    _check_dimensions(im.size, limits, what)
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise InvalidImageError(_bomb_message(what, e, limits)) from e
    except MemoryError:
        raise
    except Exception as e:
        raise _unreadable(what, e, data) from e

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


# --------------------------------------------------------------------------------------------
# Colour modes
# --------------------------------------------------------------------------------------------


def _has_alpha(im: Image.Image) -> bool:
    """Alpha channel, or a palette/colour-key transparency that PIL expands to alpha."""
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Any decoded mode to RGB (returns ``im`` itself when it is RGB already)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(im).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im, icc)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, TRANSPARENT_BACKGROUND)
        out.paste(rgba.convert("RGB"), (0, 0), rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:  # e.g. LAB, which PIL cannot convert without a profile
        raise InvalidImageError(
            f"The photo uses the colour mode {mode}, which is not supported."
        ) from e


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK through its ICC profile to sRGB when it has one; PIL's naive formula otherwise."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            log.warning("ignoring unusable CMYK ICC profile: %s", e)
    return im.convert("RGB")


def _is_rgb_profile(icc: bytes) -> bool:
    """Only an RGB profile can be embedded in our RGB outputs."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    except (ImageCms.PyCMSError, OSError, ValueError, AttributeError):
        return False


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit ``L``, scaled rather than clipped.

    ``I;16*`` modes say their range: 0..65535 maps to 0..255 (rounded). ``I`` (32-bit) and ``F``
    do not, so the data decides: float values within 0..1 are unit floats, values within 0..255
    are 8-bit, within 0..65535 16-bit, and anything else (negative, larger) is stretched from its
    minimum to its maximum. NaN counts as 0.
    """
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = (a.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(out.astype(np.uint8), "L")
    f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        f = f * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        f = f * (255.0 / 65535.0)
    elif hi > lo:
        f = (f - lo) * (255.0 / (hi - lo))
    else:
        f = np.zeros_like(f)
    return Image.fromarray(np.clip(np.rint(f), 0, 255).astype(np.uint8), "L")


def _mask_gray(im: Image.Image) -> Image.Image:
    """The 8-bit ``L`` mask of any mode, per the alpha-or-luminance rule of ``decode_mask``."""
    mode = im.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        lowest, _ = alpha.getextrema()
        if lowest < 255:
            return alpha
        return rgba.convert("RGB").convert("L")
    if mode == "L":
        return im
    if mode in ("1", "RGB", "P"):
        return im.convert("L")
    return im.convert("RGB").convert("L")


def _check_mask_aspect(mask_size: tuple[int, int], photo_size: tuple[int, int]) -> None:
    """Same aspect ratio within 1 %, or within 1 px of rounding either way; else an error."""
    mw, mh = mask_size
    pw, ph = photo_size
    relative = abs(mw * ph - pw * mh) / (pw * mh)
    rounding = abs(mh - ph * mw / pw) <= 1.0 or abs(mw - pw * mh / ph) <= 1.0
    if relative <= 0.01 or rounding:
        return
    hint = ""
    swapped_rel = abs(mw * pw - ph * mh) / (ph * mh)
    if swapped_rel <= 0.01:
        hint = (
            " The mask seems to follow the photo's stored orientation: draw it on the photo as"
            " displayed (EXIF rotation applied)."
        )
    raise MaskMismatchError(
        f"The mask is {mw}x{mh} pixels but the photo is {pw}x{ph} pixels (as displayed); "
        f"their aspect ratios differ ({mw / mh:.3f} vs {pw / ph:.3f}).{hint}"
    )


# --------------------------------------------------------------------------------------------
# Planning the model's view
# --------------------------------------------------------------------------------------------


def work_size_for(size: tuple[int, int], work_megapixels: float) -> tuple[int, int]:
    """Scales ``size`` to about ``work_megapixels``, both sides multiples of 16 (floored).

    Flooring keeps ``w * h`` within the budget; the aspect ratio changes by at most 16 px of
    rounding. Smaller sizes are up-scaled: the model works best near its native resolution.
    """
    if work_megapixels <= 0:
        raise ValueError(f"work_megapixels must be positive, got {work_megapixels}")
    w, h = size
    scale = math.sqrt(work_megapixels * 1e6 / (w * h))
    return (
        max(WORK_MULTIPLE, int(w * scale) // WORK_MULTIPLE * WORK_MULTIPLE),
        max(WORK_MULTIPLE, int(h * scale) // WORK_MULTIPLE * WORK_MULTIPLE),
    )


def plan_region(
    mask: Image.Image, *, work_megapixels: float, margin: float, band_px: int = 0
) -> Region | None:
    """Chooses the crop around the mask and its working size; ``None`` for an empty mask.

    The crop is the mask's bounding box plus ``margin`` x its longer side on every side (equal
    context in both directions, so a thin stroke still gets context across it), and at least
    ``max(MIN_CONTEXT_PX, band_px)`` pixels - pass ``dilate_px + feather_px`` as ``band_px`` so
    the paste-back band never reaches a crop edge. It is then enlarged so the model input is up-
    scaled at most ``MAX_UPSCALE`` times and its aspect ratio is at most ``MAX_CROP_ASPECT``,
    centred on the mask and shifted (not shrunk) to stay inside the photo. A crop covering more
    than ``FULL_IMAGE_FRACTION`` of the photo becomes the whole photo.
    """
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    bbox = mask.getbbox()
    if bbox is None:
        return None
    width, height = mask.size
    left, top, right, bottom = bbox
    bw, bh = right - left, bottom - top

    pad = max(margin * max(bw, bh), MIN_CONTEXT_PX, band_px)
    cw, ch = bw + 2 * pad, bh + 2 * pad
    min_side = math.sqrt(work_megapixels * 1e6) / MAX_UPSCALE
    cw, ch = max(cw, min_side), max(ch, min_side)
    cw, ch = max(cw, ch / MAX_CROP_ASPECT), max(ch, cw / MAX_CROP_ASPECT)
    cw, ch = min(cw, width), min(ch, height)

    if cw * ch > FULL_IMAGE_FRACTION * width * height:
        box = (0, 0, width, height)
    else:
        x0 = min(max((left + right - cw) / 2, 0.0), width - cw)
        y0 = min(max((top + bottom - ch) / 2, 0.0), height - ch)
        box = (
            max(0, math.floor(x0)),
            max(0, math.floor(y0)),
            min(width, math.ceil(x0 + cw)),
            min(height, math.ceil(y0 + ch)),
        )
    crop_size = (box[2] - box[0], box[3] - box[1])
    return Region(box=box, work_size=work_size_for(crop_size, work_megapixels))


def prepare(
    photo: bytes,
    mask: bytes,
    *,
    limits: ImageLimits,
    work_megapixels: float,
    margin: float,
    band_px: int = 0,
) -> Prepared:
    """Decodes both inputs and builds the model's image and mask (see ``plan_region``).

    See ``model_inputs`` for how the model's image and mask are made from the region.
    """
    original = decode_photo(photo, limits)
    binary = decode_mask(mask, original.size, limits)
    region = plan_region(binary, work_megapixels=work_megapixels, margin=margin, band_px=band_px)
    if region is None:
        return Prepared(original, binary, None, None, None)
    model_image, model_mask = model_inputs(original, binary, region)
    return Prepared(original, binary, region, model_image, model_mask)


def model_inputs(
    original: Image.Image, mask: Image.Image, region: Region
) -> tuple[Image.Image, Image.Image]:
    """The model's RGB image and ``L`` 0/255 mask: the region's crop at ``region.work_size``.

    The image is resized with Lanczos when shrinking (after an integer box reduction,
    ``reducing_gap=1.5``, which halves the time of a 12 MP -> 1 MP resize at no visible cost),
    bicubic when enlarging; ``box=`` avoids copying the crop first. The mask is area-averaged and
    marked wherever any masked pixel falls (conservative: a 2 px leash survives a 4x downscale).
    """
    downscale = region.work_size[0] < region.size[0]
    image = original.resize(
        region.work_size,
        Image.Resampling.LANCZOS if downscale else Image.Resampling.BICUBIC,
        box=region.box,
        reducing_gap=1.5 if downscale else None,
    )
    image.info = {}
    small_mask = mask.resize(region.work_size, Image.Resampling.BOX, box=region.box)
    return image, small_mask.point(_NONZERO_LUT)


# --------------------------------------------------------------------------------------------
# Paste-back
# --------------------------------------------------------------------------------------------


def band_reach(dilate_px: int, feather_px: int) -> int:
    """How far (Chebyshev distance, original pixels) generated pixels may reach past the mask."""
    return dilate_px + feather_px


def _dilate(mask: Image.Image, radius: int) -> Image.Image:
    """Square (Chebyshev) dilation of a 0/255 mask in O(pixels), whatever the radius.

    A horizontal then a vertical box blur, each thresholded at "> 0": a pixel becomes white when
    any pixel within ``radius`` is. PIL's box blur is a C running sum, so this costs the same for
    radius 4 or 200, unlike ``ImageFilter.MaxFilter`` (size^2 per pixel).
    """
    while radius > 0:
        step = min(radius, _MAX_DILATE_STEP)
        mask = mask.filter(ImageFilter.BoxBlur((step, 0))).point(_NONZERO_LUT)
        mask = mask.filter(ImageFilter.BoxBlur((0, step))).point(_NONZERO_LUT)
        radius -= step
    return mask


def blend_alpha(mask: Image.Image, *, dilate_px: int, feather_px: int) -> Image.Image:
    """The paste-back alpha of a 0/255 mask, in the mask's (original) pixel scale.

    Exactly 255 within ``dilate_px`` (+1 when ``feather_px`` is odd) of the mask, exactly 0 beyond
    ``dilate_px + feather_px``, and a smooth ramp between: the mask is dilated by
    ``dilate_px + feather_px - h`` and box-blurred twice with radii summing to
    ``h = feather_px // 2`` (a piecewise-quadratic, Gaussian-like edge with a finite support, so
    "outside the band" is exact, which a true Gaussian is not).
    """
    if dilate_px < 0 or feather_px < 0:
        raise ValueError("dilate_px and feather_px must not be negative")
    half = feather_px // 2
    alpha = _dilate(mask, dilate_px + feather_px - half)
    first = half - half // 2
    for radius in (first, half // 2):
        if radius:
            alpha = alpha.filter(ImageFilter.BoxBlur(radius))
    return alpha


def composite(
    prepared: Prepared, generated: Image.Image, *, dilate_px: int, feather_px: int
) -> Image.Image:
    """Pastes the model output back into a copy of the original.

    ``generated`` (normally ``region.work_size``; any size is resized) is mapped onto the crop
    box, and blended through ``blend_alpha`` of the full-resolution mask, so dilation and
    feathering are measured in original pixels whatever the working scale. Only the band's
    bounding box (mask bbox + ``band_reach``, within the crop) is resampled, blurred and pasted:
    outside it, and everywhere alpha is 0, the result is bit-identical to the original. An empty
    mask returns an unchanged copy. The ICC profile (``info``) of the original is kept.

    The band is cut where it would cross a crop edge inside the photo; the crop keeps at least
    ``MIN_CONTEXT_PX`` (64) around the mask, so this only matters when ``dilate_px +
    feather_px`` exceeds that - then pass their sum as ``band_px`` to ``prepare``.
    """
    original = prepared.original
    region = prepared.region
    if region is None:
        return original.copy()
    bbox = prepared.mask.getbbox()
    if bbox is None:  # cannot happen for a Prepared built by prepare()
        return original.copy()
    left, top, right, bottom = region.box
    crop_w, crop_h = region.size
    reach = band_reach(dilate_px, feather_px)
    band = (
        max(left, bbox[0] - reach),
        max(top, bbox[1] - reach),
        min(right, bbox[2] + reach),
        min(bottom, bbox[3] + reach),
    )
    band_size = (band[2] - band[0], band[3] - band[1])

    if generated.mode != "RGB":
        generated = generated.convert("RGB")
    gw, gh = generated.size
    sx, sy = gw / crop_w, gh / crop_h
    source_box = (
        (band[0] - left) * sx,
        (band[1] - top) * sy,
        (band[2] - left) * sx,
        (band[3] - top) * sy,
    )
    upscale = sx < 1.0 or sy < 1.0
    patch = generated.resize(
        band_size,
        Image.Resampling.BICUBIC if upscale else Image.Resampling.LANCZOS,
        box=source_box,
    )
    alpha = blend_alpha(prepared.mask.crop(band), dilate_px=dilate_px, feather_px=feather_px)

    result = original.copy()
    result.paste(patch, band[:2], alpha)
    return result


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def make_preview(edited: Image.Image) -> Image.Image:
    """The edit scaled so its longest side is ``PREVIEW_SIDE`` (never up-scaled), RGB."""
    rgb = edited if edited.mode == "RGB" else edited.convert("RGB")
    w, h = rgb.size
    longest = max(w, h)
    if longest <= PREVIEW_SIDE:
        return rgb.copy()
    scale = PREVIEW_SIDE / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def encode_outputs(edited: Image.Image) -> tuple[bytes, bytes]:
    """``(edited.jpg, preview.jpg)``: full resolution at q95, and the preview at q85.

    Chroma subsampling is PIL's default 4:2:0, as phone cameras write; the photo's RGB ICC
    profile (``edited.info["icc_profile"]``) is embedded in both; no EXIF is written.
    """
    rgb = edited if edited.mode == "RGB" else edited.convert("RGB")
    icc = edited.info.get("icc_profile")
    return (
        _jpeg_bytes(rgb, EDITED_QUALITY, icc),
        _jpeg_bytes(make_preview(rgb), PREVIEW_QUALITY, icc),
    )


def _jpeg_bytes(im: Image.Image, quality: int, icc: bytes | None) -> bytes:
    """One baseline JPEG in memory."""
    buf = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if icc:
        options["icc_profile"] = icc
    im.save(buf, "JPEG", **options)
    return buf.getvalue()
