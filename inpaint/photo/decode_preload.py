"""Imported once by the decode sandbox's fork server (``inpaint.photo.sandbox.PRELOAD``): imports
the decoders and decodes one tiny JPEG, PNG and WebP in process, so that their first-use costs
(lazy plugin and codec set-up, allocator arenas) are paid once in the server instead of in every
child it forks (about 30 ms a child here)."""

from __future__ import annotations

import io
import logging

from PIL import Image

from inpaint.photo import decoding, mask

log = logging.getLogger(__name__)


def _warm_up() -> None:
    limits = decoding.ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)
    picture = Image.new("RGB", (32, 32), (90, 120, 150))
    for fmt in ("JPEG", "PNG", "WEBP"):
        try:
            buf = io.BytesIO()
            picture.save(buf, fmt)
            mask.read_mask_in_process(buf.getvalue(), limits)
            decoding.decode_photo_in_process(buf.getvalue(), limits)
        except Exception:  # only an optimisation: the fork server must start regardless
            log.warning("decoder warm-up failed for %s", fmt, exc_info=True)


_warm_up()
