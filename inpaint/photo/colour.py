"""Colour modes of decoded pictures: whatever mode a decoder gives, to the RGB photo and the
greyscale values the mask rules read (transparency, CMYK through its ICC profile, 16-bit and
float greyscale, colour keys). Pure PIL + numpy, run inside the decoding child."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageCms

from inpaint.errors import InvalidImageError

log = logging.getLogger(__name__)

#: Colour that transparent photo pixels are composited on (see ``decoding.decode_photo``).
TRANSPARENT_BACKGROUND = (255, 255, 255)
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def apply_colour_key(im: Image.Image, png: bytes | None) -> Image.Image:
    """A colour-key transparency (PNG tRNS on a greyscale or RGB image) as a real alpha channel.

    Pillow keeps the key in ``info["transparency"]`` and honours it only for some modes (8-bit
    grey, not RGB once decoded, not 16-bit grey), so it is applied here, exactly, for every
    mode: pixels equal to the key become alpha 0 (``LA`` or ``RGBA``). Pillow scales 2- and
    4-bit grey samples to 8 bits but not the key, so the key is scaled the same way.
    """
    key = im.info.get("transparency")
    if key is None or isinstance(key, bytes) or im.mode in ALPHA_MODES or im.mode == "P":
        return im
    pixels = np.asarray(im)
    if pixels.ndim == 3:
        hit = np.all(pixels[..., :3] == np.asarray(key, dtype=np.int64)[:3], axis=2)
    else:
        depth = png[24] if png is not None and len(png) > 25 else 8
        if im.mode == "L" and depth in (2, 4):
            key = int(key) * 255 // ((1 << depth) - 1)
        hit = pixels == key
    alpha = Image.fromarray(np.where(hit, 0, 255).astype(np.uint8), "L")
    base = im.copy()
    base.info.pop("transparency", None)
    if base.mode in HIGH_DEPTH_MODES:
        base = high_depth_to_l(base)
    out = base.convert("RGBA" if pixels.ndim == 3 else "LA")
    out.putalpha(alpha)
    out.info = {k: v for k, v in im.info.items() if k != "transparency"}
    return out


def has_alpha(im: Image.Image) -> bool:
    """Alpha channel, or a palette/colour-key transparency that PIL expands to alpha."""
    return im.mode in ALPHA_MODES or "transparency" in im.info


def to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Any decoded mode to RGB (returns ``im`` itself when it is RGB already)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in HIGH_DEPTH_MODES:
        return high_depth_to_l(im).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im, icc)
    if has_alpha(im):
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


def is_rgb_profile(icc: bytes) -> bool:
    """Only an RGB profile can be embedded in our RGB outputs."""
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    except (ImageCms.PyCMSError, OSError, ValueError, AttributeError):
        return False


def high_depth_to_l(im: Image.Image) -> Image.Image:
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
