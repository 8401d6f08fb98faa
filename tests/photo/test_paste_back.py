"""The tiled, threaded paste-back against today's whole-band implementation, written out here.

Outside the paste-back band (farther than ``band_reach`` from the mask) every pixel must stay
bit-identical to the original; inside it the result may differ from the whole-band version by at
most one level (each tile resamples its own share of the generated image). The alpha itself is
exactly the whole-image filter's.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from inpaint.photo import imaging
from inpaint.photo.imaging import Prepared

NONZERO = [0] + [255] * 255


def whole_alpha(mask: Image.Image, dilate_px: int, feather_px: int) -> Image.Image:
    """The alpha as it was computed before tiling: PIL's filters over the whole image."""
    half = feather_px // 2
    radius = dilate_px + feather_px - half
    alpha = mask
    while radius > 0:
        step = min(radius, 200)
        alpha = alpha.filter(ImageFilter.BoxBlur((step, 0))).point(NONZERO)
        alpha = alpha.filter(ImageFilter.BoxBlur((0, step))).point(NONZERO)
        radius -= step
    for blur in (half - half // 2, half // 2):
        if blur:
            alpha = alpha.filter(ImageFilter.BoxBlur(blur))
    return alpha


def whole_band_composite(
    prepared: Prepared, generated: Image.Image, dilate_px: int, feather_px: int
) -> Image.Image:
    """The paste-back before tiling: one resample of the whole band, one blend."""
    region = prepared.region
    assert region is not None
    bbox = prepared.mask.getbbox()
    left, top, right, bottom = region.box
    reach = dilate_px + feather_px
    band = (
        max(left, bbox[0] - reach),
        max(top, bbox[1] - reach),
        min(right, bbox[2] + reach),
        min(bottom, bbox[3] + reach),
    )
    sx, sy = generated.width / region.size[0], generated.height / region.size[1]
    source = (
        (band[0] - left) * sx,
        (band[1] - top) * sy,
        (band[2] - left) * sx,
        (band[3] - top) * sy,
    )
    resample = Image.Resampling.BICUBIC if sx < 1 or sy < 1 else Image.Resampling.LANCZOS
    patch = generated.resize((band[2] - band[0], band[3] - band[1]), resample, box=source)
    alpha = whole_alpha(prepared.mask.crop(band), dilate_px, feather_px)
    result = prepared.original.copy()
    result.paste(patch, band[:2], alpha)
    return result


def ellipse(size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask


def ragged(size: tuple[int, int]) -> Image.Image:
    """Blocks of mask with holes and islands: many tiles on an outline."""
    rng = np.random.default_rng(4)
    cells = rng.random((size[1] // 40 + 1, size[0] // 40 + 1)) > 0.55
    big = np.kron(cells, np.ones((40, 40), dtype=bool))[: size[1], : size[0]]
    return Image.fromarray((big * 255).astype(np.uint8), "L")


def photo(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(9)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    smooth = np.dstack([x * 255 // size[0], y * 255 // size[1], (x + y) * 255 // sum(size)])
    grain = rng.integers(-20, 21, smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB")


# name: (photo size, mask, work megapixels, dilate_px, feather_px)
CASES = {
    "12 MP, large ellipse": (
        (4000, 3000),
        lambda s: ellipse(s, (252, 189, 3749, 2812)),
        1.0,
        4,
        8,
    ),
    "crop, small blob": ((2000, 1500), lambda s: ellipse(s, (1300, 200, 1500, 330)), 1.0, 4, 8),
    "mask on the photo's corner": (
        (1500, 1000),
        lambda s: ellipse(s, (-300, 700, 400, 1300)),
        0.5,
        6,
        3,
    ),
    "ragged mask, down-scaled work": ((1600, 1200), ragged, 0.25, 4, 8),
    "dilation wider than a tile": (
        (1200, 900),
        lambda s: ellipse(s, (300, 200, 900, 700)),
        1.0,
        150,
        21,
    ),
    "no dilation, no feather": ((1200, 900), lambda s: ellipse(s, (100, 80, 1000, 800)), 1.0, 0, 0),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_tiled_paste_back_matches_the_whole_band_version(case: str) -> None:
    size, make_mask, megapixels, dilate_px, feather_px = CASES[case]
    original = photo(size)
    mask = make_mask(size)
    region = imaging.plan_region(
        mask, work_megapixels=megapixels, margin=0.5, band_px=dilate_px + feather_px
    )
    assert region is not None
    model_image, model_mask = imaging.model_inputs(original, mask, region)
    prepared = Prepared(original, mask, region, model_image, model_mask)
    rng = np.random.default_rng(2)
    generated = Image.fromarray(
        rng.integers(0, 256, (*region.work_size[::-1], 3), dtype=np.uint8), "RGB"
    )

    got = np.asarray(
        imaging.composite(prepared, generated, dilate_px=dilate_px, feather_px=feather_px)
    )
    before = np.asarray(whole_band_composite(prepared, generated, dilate_px, feather_px))
    alpha = np.asarray(whole_alpha(mask, dilate_px, feather_px))

    outside = alpha == 0  # farther than band_reach from the mask (or cut off at the crop)
    assert np.array_equal(got[outside], np.asarray(original)[outside])
    assert np.array_equal(got[outside], before[outside])
    inside = ~outside
    assert inside.any()
    difference = np.abs(got[inside].astype(np.int16) - before[inside])
    assert difference.max() <= 1, (case, int(difference.max()))


@pytest.mark.parametrize(("dilate_px", "feather_px"), [(4, 8), (0, 0), (6, 3), (150, 21), (0, 7)])
def test_tiled_alpha_is_exactly_the_whole_image_filter(dilate_px: int, feather_px: int) -> None:
    for mask in (ragged((900, 700)), ellipse((900, 700), (-50, 100, 600, 650))):
        tiled = imaging.blend_alpha(mask, dilate_px=dilate_px, feather_px=feather_px)
        assert np.array_equal(
            np.asarray(tiled), np.asarray(whole_alpha(mask, dilate_px, feather_px))
        )
