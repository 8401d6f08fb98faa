"""The mask rules: which pixels of the photo to repaint, from the mask's untrusted bytes.

White (255) means "repaint": the alpha channel is the mask when some pixel is at least half
transparent (strokes on a transparent canvas), else the luminance; binarised at 50 %; a mask of
another size but the same aspect ratio is resized (a larger one keeps 1-px strokes), any other
aspect ratio is a :class:`~inpaint.errors.MaskMismatchError`. The bytes are opened and checked
exactly as the photo's are (``inpaint.photo.decoding``: structure, limits, the decoding child),
and ``decode_inputs`` decodes the photo and the mask side by side.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from inpaint.errors import MaskMismatchError
from inpaint.photo import colour, decoding, sandbox
from inpaint.photo.decoding import ImageLimits, ImageMeta

# ``decoding``'s functions and ``ISOLATED`` are read through the module at each call, so a test's
# patch of ``decoding.ISOLATED`` holds for the mask too.

#: An alpha channel is the mask only when some pixel is at least half transparent: strokes on a
#: transparent canvas. Alpha that is opaque or nearly so everywhere (e.g. 250..254 from an
#: editor's export) carries no strokes, and the luminance decides instead; otherwise such noise
#: would turn into a full repaint.
MASK_ALPHA_THRESHOLD = 128
# point() lookup table: binarise at 50 %.
_BINARISE_LUT = [0] * 128 + [255] * 128


def decode_mask(data: bytes, size: tuple[int, int], limits: ImageLimits) -> Image.Image:
    """Decodes the mask into an ``L`` image of values 0/255 and exactly ``size``.

    White (255) means "repaint". The rule for which channel is the mask:

    - If the image has an alpha channel (RGBA, LA, PA, or a palette/colour-key transparency) and
      some pixel is at least half transparent (alpha < ``MASK_ALPHA_THRESHOLD``), the alpha
      channel is the mask: painted strokes on a transparent canvas are what to repaint, whatever
      their colour.
    - Otherwise the luminance is the mask (white on black).

    16-bit masks are scaled to 8 bits like photos. The result is binarised at 50 %
    (>= 128 -> 255); see ``fit_mask`` for masks of another size.

    ``size`` is the photo's *displayed* size (after its EXIF rotation), and the mask is expected
    in that orientation (its own EXIF orientation, if any, is applied too). A mask of another
    size but the same aspect ratio (within 1 %, or 1 px of rounding) is resized (``fit_mask``);
    any other aspect ratio is a :class:`MaskMismatchError` naming both sizes.
    """
    return fit_mask(read_mask(data, limits), size)


def read_mask(data: bytes, limits: ImageLimits) -> Image.Image:
    """The first half of ``decode_mask``: decoded, oriented, its mask channel as ``L`` (not yet
    binarised), at its own size. Needs nothing of the photo, so it can run beside its decoding."""
    if not decoding.ISOLATED:
        return decoding.guarded("mask", _mask_pixels, data, limits)
    decoding.check_type(data, "mask")
    meta, payload = sandbox.run(_mask_payload, bytes(data), limits, what="mask")
    return decoding.from_payload(meta, payload)


def fit_mask(gray: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The second half of ``decode_mask``: checked against and resized to ``size``, binarised.

    A larger mask is binarised first and then reduced by area: a photo pixel is repainted when
    the mask pixels it covers hold at least half a one-pixel line across it (coverage of
    ``1 / (2 * scale)``), so a thin stroke survives any reduction while isolated specks (noise)
    do not grow into blocks. A smaller mask is enlarged bilinearly and binarised at 50 %.
    """
    if gray.size == size:
        return gray.point(_BINARISE_LUT)
    _check_mask_aspect(gray.size, size)
    if gray.width > size[0] or gray.height > size[1]:
        scale = max(gray.width / size[0], gray.height / size[1])
        covered = gray.point(_BINARISE_LUT).resize(size, Image.Resampling.BOX)
        least = max(1, math.ceil(255 / (2 * scale)))
        return covered.point([0] * least + [255] * (256 - least))
    return gray.resize(size, Image.Resampling.BILINEAR).point(_BINARISE_LUT)


def decode_inputs(
    photo: bytes, mask: bytes, limits: ImageLimits
) -> tuple[Image.Image, Image.Image]:
    """``decoding.decode_photo`` and ``decode_mask`` with the two decodings side by side (each in
    its own child process, or with PIL's decoders releasing the GIL in process), so on two cores
    this takes about the time of the longer one. Errors are the same and come in the same order:
    the photo's first, then the mask's."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-mask") as pool:
        gray = pool.submit(read_mask, mask, limits)
        original = decoding.decode_photo(photo, limits)
        return original, fit_mask(gray.result(), original.size)


def read_mask_in_process(data: bytes, limits: ImageLimits) -> Image.Image:
    """``read_mask`` in this process, whatever ``decoding.ISOLATED`` says (the sandbox's
    warm-up)."""
    return decoding.guarded("mask", _mask_pixels, data, limits)


def _mask_payload(data: bytes, limits: ImageLimits) -> tuple[ImageMeta, bytes]:
    """In the decoding child: the mask's grey channel as (mode, size, info) and its bytes."""
    return decoding.to_payload(decoding.guarded("mask", _mask_pixels, data, limits))


def _mask_pixels(data: bytes, limits: ImageLimits) -> Image.Image:
    """``read_mask`` without its guard."""
    return _mask_gray(decoding.open_checked(data, limits, "mask"))


def _mask_gray(im: Image.Image) -> Image.Image:
    """The 8-bit ``L`` mask of any mode, per the alpha-or-luminance rule of ``decode_mask``."""
    mode = im.mode
    if mode in colour.HIGH_DEPTH_MODES:
        return colour.high_depth_to_l(im)
    if colour.has_alpha(im):
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        lowest, _ = alpha.getextrema()
        if lowest < MASK_ALPHA_THRESHOLD:
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
