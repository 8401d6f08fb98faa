"""Everything between the uploaded bytes and the model, and back: decode, plan, paste, encode.

Pure PIL + numpy (no torch), so it is cheap to import, to test and to benchmark on any machine.

The pipeline, and why each step exists:

1. ``decode_photo`` / ``decode_mask`` (in ``inpaint.photo.decoding`` and ``inpaint.photo.mask``)
   turn untrusted bytes into an RGB photo in its displayed orientation and a binary ``L`` mask of
   the photo's size, or a clear error the user sees.
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

import functools
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from inpaint.photo.decoding import ImageLimits

# Re-exported: the decoding half of the pipeline's door (callers use imaging only).
from inpaint.photo.decoding import decode_photo as decode_photo
from inpaint.photo.mask import decode_inputs as decode_inputs
from inpaint.photo.mask import decode_mask as decode_mask

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
#: Preview: longest side in pixels, and JPEG qualities of the two outputs.
PREVIEW_SIDE = 512
EDITED_QUALITY = 95
PREVIEW_QUALITY = 85

_NONZERO_LUT = [0] + [255] * 255
# One box-blur pass of radius r turns a lone 255 into 255 / (2r + 1), which must still round to
# at least 1 for the dilation threshold to see it; chunk larger dilations.
_MAX_DILATE_STEP = 200
# Side of the squares the paste-back works in (see ``_tiles``): small enough that few pixels
# around the outline are filtered, large enough that per-tile overhead stays small.
_TILE = 128


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
    original, binary = decode_inputs(photo, mask, limits)
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
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-resize") as pool:
        small_mask = pool.submit(mask.resize, region.work_size, Image.Resampling.BOX, region.box)
        image = original.resize(
            region.work_size,
            Image.Resampling.LANCZOS if downscale else Image.Resampling.BICUBIC,
            box=region.box,
            reducing_gap=1.5 if downscale else None,
        )
        image.info = {}
        return image, small_mask.result().point(_NONZERO_LUT)


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

    Computed tile by tile (see ``_tiles``), the same values as filtering the whole image.
    """
    if dilate_px < 0 or feather_px < 0:
        raise ValueError("dilate_px and feather_px must not be negative")
    alpha = Image.new("L", mask.size, 0)
    for box, halo, kind in _tiles(mask, band_reach(dilate_px, feather_px)):
        if kind == "inside":
            alpha.paste(_uniform_alpha(dilate_px, feather_px), box)
        elif kind == "edge":
            part = _blend_alpha_whole(mask.crop(halo), dilate_px=dilate_px, feather_px=feather_px)
            x, y = box[0] - halo[0], box[1] - halo[1]
            alpha.paste(part.crop((x, y, x + box[2] - box[0], y + box[3] - box[1])), box)
    return alpha


Box = tuple[int, int, int, int]


def _tiles(mask: Image.Image, reach: int) -> list[tuple[Box, Box, str]]:
    """The mask cut into ``_TILE`` squares: (box, box + reach, kind), where the kind says what
    the surroundings hold: no mask ("outside"), only mask ("inside"), or both ("edge").

    Every filter pass of the alpha looks at most ``band_reach`` pixels far (their radii add up
    to it), so a tile's alpha depends only on the mask within ``band_reach`` of it: none there
    means 0; all there means the value the filters make of a uniform mask; otherwise the
    filters run over tile + reach, which gives exactly the values of filtering the whole image
    (PIL's filters extend the image's own edges the same way). On a 12 MP mask only the tiles
    on the mask's outline are filtered.
    """
    width, height = mask.size
    values = np.asarray(mask)
    tiles: list[tuple[Box, Box, str]] = []
    for top in range(0, height, _TILE):
        for left in range(0, width, _TILE):
            box = (left, top, min(left + _TILE, width), min(top + _TILE, height))
            halo = (
                max(0, left - reach),
                max(0, top - reach),
                min(width, box[2] + reach),
                min(height, box[3] + reach),
            )
            around = values[halo[1] : halo[3], halo[0] : halo[2]]
            kind = "outside" if not around.any() else "inside" if around.all() else "edge"
            tiles.append((box, halo, kind))
    return tiles


@functools.cache
def _uniform_alpha(dilate_px: int, feather_px: int) -> int:
    """The alpha deep inside a mask: what the filters make of an all-255 image."""
    side = 2 * band_reach(dilate_px, feather_px) + 3
    full = Image.new("L", (side, side), 255)
    alpha = _blend_alpha_whole(full, dilate_px=dilate_px, feather_px=feather_px)
    return int(alpha.getpixel((0, 0)))  # type: ignore[arg-type]


def _blend_alpha_whole(mask: Image.Image, *, dilate_px: int, feather_px: int) -> Image.Image:
    """``blend_alpha`` over the whole image at once (PIL's C filters)."""
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

    The generated image is resampled in a second thread while ``blend_alpha`` works (PIL's C
    code releases the GIL), and ``blend_alpha`` filters only the tiles on the mask's outline.

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

    if generated.mode != "RGB":
        generated = generated.convert("RGB")
    gw, gh = generated.size
    sx, sy = gw / crop_w, gh / crop_h
    resample = Image.Resampling.BICUBIC if sx < 1.0 or sy < 1.0 else Image.Resampling.LANCZOS
    source_box = (
        (band[0] - left) * sx,
        (band[1] - top) * sy,
        (band[2] - left) * sx,
        (band[3] - top) * sy,
    )
    band_size = (band[2] - band[0], band[3] - band[1])
    with ThreadPoolExecutor(max_workers=1) as pool:
        resampled = pool.submit(generated.resize, band_size, resample, box=source_box)
        alpha = blend_alpha(prepared.mask.crop(band), dilate_px=dilate_px, feather_px=feather_px)
        patch = resampled.result()

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
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview") as pool:
        preview = pool.submit(lambda: _jpeg_bytes(make_preview(rgb), PREVIEW_QUALITY, icc))
        return _jpeg_bytes(rgb, EDITED_QUALITY, icc), preview.result()


def _jpeg_bytes(im: Image.Image, quality: int, icc: bytes | None) -> bytes:
    """One baseline JPEG in memory."""
    buf = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if icc:
        options["icc_profile"] = icc
    im.save(buf, "JPEG", **options)
    return buf.getvalue()
