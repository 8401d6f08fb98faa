"""Sample photos and masks shared by every level of the suite."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo_jpeg(size: tuple[int, int] = (1200, 800)) -> bytes:
    """A real photo (scikit-image's cat) at ``size``, as a JPEG."""
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def ellipse_mask(
    size: tuple[int, int] = (1200, 800), box: tuple[float, ...] = (0.3, 0.2, 0.6, 0.6)
) -> bytes:
    """A white ellipse on black (``box`` in fractions of the size), as a PNG."""
    mask = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(mask).ellipse((box[0] * w, box[1] * h, box[2] * w, box[3] * h), fill=255)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def ramp_inputs(size: int | tuple[int, int] = 64) -> tuple[Image.Image, Image.Image]:
    """A colour ramp and a mask of its middle half (the model tests' job), ``size`` a side or
    ``(width, height)``."""
    width, height = (size, size) if isinstance(size, int) else size
    ramp = np.linspace(0, 255, width * height * 3, dtype=np.float32).reshape(height, width, 3)
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return Image.fromarray(ramp.astype(np.uint8)), mask
