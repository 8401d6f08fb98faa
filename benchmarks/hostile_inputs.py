"""Hostile uploads built by code (no binaries in git), and a benchmark of their decode cost.

Each builder makes one of the files found by the fuzz campaign of issue 30 (or a named variant
of it) at any size, so the tests use small ones and the benchmark the full-size worst cases.

``python -m benchmarks.hostile_inputs`` decodes each worst case through the production path
(``inpaint.photo.mask.decode_inputs``: structure checks, then the sandboxed decode worker) and
prints the outcome, the wall time and the peak resident memory of the child that decoded it
(its ``ru_maxrss``: pages shared with the fork server included).
"""

from __future__ import annotations

import argparse
import io
import resource
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode(im: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def photo_array(size: tuple[int, int], seed: int = 7, noise_level: int = 12) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients plus mild noise): compresses like a photo."""
    w, h = size
    rng = np.random.default_rng(seed)
    x = (np.arange(w, dtype=np.uint32) * 255 // max(w - 1, 1)).astype(np.uint8)
    y = (np.arange(h, dtype=np.uint32) * 255 // max(h - 1, 1)).astype(np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    out[..., 0] = x[None, :]
    out[..., 1] = y[:, None]
    out[..., 2] = (x[None, :] // 2 + y[:, None] // 2).astype(np.uint8)
    noise = rng.integers(0, max(noise_level, 1), (h, w), dtype=np.uint8)
    np.add(out, noise[..., None], out=out, casting="unsafe")
    return Image.fromarray(out, "RGB")


def tiff_many_strips(strips: int, side: int = 16) -> bytes:
    """An uncompressed 8-bit grey TIFF of side x side whose pixels are split in ``strips``
    one-byte strips (the issue's 3.8 MB file had about 475,000)."""
    entries = []
    header_size = 8
    ifd_count = 9
    ifd_size = 2 + ifd_count * 12 + 4
    offsets_at = header_size + ifd_size
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 4 * strips
    rows_per_strip = 1

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, count, value)

    entries = [
        entry(256, 4, 1, side),  # width
        entry(257, 4, 1, side),  # height
        entry(258, 3, 1, 8),  # bits per sample
        entry(259, 3, 1, 1),  # no compression
        entry(262, 3, 1, 1),  # black is zero
        entry(273, 4, strips, offsets_at),  # strip offsets
        entry(277, 3, 1, 1),  # samples per pixel
        entry(278, 4, 1, rows_per_strip),
        entry(279, 4, strips, counts_at),  # strip byte counts
    ]
    ifd = struct.pack("<H", ifd_count) + b"".join(entries) + struct.pack("<I", 0)
    offsets = struct.pack(f"<{strips}I", *[pixels_at + (i % (side * side)) for i in range(strips)])
    counts = struct.pack(f"<{strips}I", *([1] * strips))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + offsets + counts + bytes(side * side)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG, a scan's entropy data included in it."""
    out = []
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((marker, pos, pos + 2))
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, pos, end))
        pos = end
    return out


def jpeg_repeated_scan(side: int, repeats: int) -> bytes:
    """A progressive side x side JPEG whose smallest scan is repeated ``repeats`` more times
    (the issue's file: 7000 x 7000, 474 KB, 3,000 repeats, 15.6 s in Pillow)."""
    data = encode(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True)
    segments = jpeg_segments(data)
    scans = [(s, e) for m, s, e in segments if m == 0xDA]
    start, end = min(scans, key=lambda se: se[1] - se[0])
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * repeats + data[eoi:]


def jpeg_app0_flood(total_bytes: int) -> bytes:
    """A small valid JPEG preceded by empty APP0 markers up to ``total_bytes``."""
    small = encode(photo_array((64, 64)), "JPEG")
    count = max(0, (total_bytes - len(small)) // 4)
    return small[:2] + b"\xff\xe0\x00\x02" * count + small[2:]


def png_private_flood(total_bytes: int) -> bytes:
    """A small valid PNG with empty private ancillary chunks up to ``total_bytes``."""
    small = encode(photo_array((64, 64)))
    one = png_chunk(b"prVt", b"")
    count = max(0, (total_bytes - len(small)) // len(one))
    return small[:33] + one * count + small[33:]


def png_palette_trns_overflow(entries: int = 300) -> bytes:
    """A palette PNG whose tRNS has more entries than its 256-colour palette."""
    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 3, 0, 0, 0)
    palette = bytes(range(256)) * 3
    raw = b"".join(b"\x00" + bytes(range(32)) for _ in range(32))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"PLTE", palette)
        + png_chunk(b"tRNS", b"\x80" * entries)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def jpeg_cut_with_eoi(side: int = 256, keep: float = 0.5) -> bytes:
    """A baseline JPEG cut mid-scan, then given an EOI marker (Pillow shows grey rows)."""
    data = encode(photo_array((side, side)), "JPEG", quality=90)
    cut = data[: int(len(data) * keep)]
    while cut.endswith(b"\xff"):
        cut = cut[:-1]
    return cut + b"\xff\xd9"


def jpeg_header_lies(claimed: int = 4000, side: int = 16) -> bytes:
    """A side x side JPEG whose frame header claims claimed x claimed (633 bytes at 16)."""
    data = bytearray(encode(photo_array((side, side)), "JPEG"))
    for marker, start, _ in jpeg_segments(bytes(data)):
        if marker == 0xC0:
            data[start + 5 : start + 9] = struct.pack(">HH", claimed, claimed)
    return bytes(data)


def jpeg_most_scans(side: int, budget: int) -> bytes:
    """The worst progressive JPEG the structure checks allow: ``MAX_JPEG_SCANS`` scans, the
    largest scan that fits repeated, within ``budget`` bytes."""
    from inpaint.photo.upload_checks import MAX_JPEG_SCANS

    data = jpeg_large(side, progressive=True)
    segments = jpeg_segments(data)
    scans = [(s, e) for m, s, e in segments if m == 0xDA]
    room = MAX_JPEG_SCANS - len(scans)
    fitting = [se for se in scans if len(data) + (se[1] - se[0]) * room <= budget]
    start, end = max(fitting or scans[:1], key=lambda se: se[1] - se[0])
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * room + data[eoi:]


def png_most_chunks(side: int) -> bytes:
    """The worst PNG the structure checks allow: a side x side RGBA picture whose data is split
    in ``MAX_PNG_IDAT_CHUNKS`` IDAT chunks, behind ``MAX_PNG_ANCILLARY_CHUNKS`` text chunks that
    fill ``MAX_PNG_ANCILLARY_BYTES``."""
    from inpaint.photo.upload_checks import (
        MAX_PNG_ANCILLARY_BYTES,
        MAX_PNG_ANCILLARY_CHUNKS,
        MAX_PNG_IDAT_CHUNKS,
    )

    data = png_rgba_large(side)
    idat_start = data.index(b"IDAT") - 4
    iend = data.rindex(b"IEND") - 4
    stream = b""
    pos = idat_start
    while pos < iend:
        length = int.from_bytes(data[pos : pos + 4], "big")
        stream += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    step = max(1, -(-len(stream) // MAX_PNG_IDAT_CHUNKS))
    idats = b"".join(png_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    text_size = MAX_PNG_ANCILLARY_BYTES // MAX_PNG_ANCILLARY_CHUNKS - 12
    text = png_chunk(b"tEXt", b"k\x00" + b"t" * (text_size - 2)) * MAX_PNG_ANCILLARY_CHUNKS
    return data[:33] + text + idats + data[iend:]


def png_rgba_large(side: int) -> bytes:
    """A legitimate RGBA PNG (the largest honest decode: 4 bytes a pixel), noise-free so that a
    7000 x 7000 one stays under the 40 MiB limit."""
    im = photo_array((side, side), noise_level=1)
    im.putalpha(Image.linear_gradient("L").resize((side, side)))
    return encode(im, compress_level=6)


def jpeg_large(side: int, progressive: bool = False) -> bytes:
    """A legitimate photo-like JPEG (the benchmark's reference for honest cost)."""
    return encode(photo_array((side, side)), "JPEG", quality=92, progressive=progressive)


# --------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def worst_cases(scale: float) -> dict[str, Callable[[], bytes]]:
    """The issue's worst files at ``scale`` of their size (1.0: the 40 MiB limit)."""
    full = int(40 * MIB * scale)
    return {
        "tiff 9.5 MB of 1-byte strips": lambda: tiff_many_strips(int(1_187_000 * scale)),
        "jpeg progressive 7000^2, scan x3000": lambda: jpeg_repeated_scan(
            max(64, int(7000 * min(scale * 4, 1))), 3000
        ),
        "jpeg 40 MiB of empty APP0": lambda: jpeg_app0_flood(full),
        "png 40 MiB of private chunks": lambda: png_private_flood(full),
        "jpeg 16x16, header says 4000^2": jpeg_header_lies,
        "jpeg cut mid-scan + EOI (2000^2)": lambda: jpeg_cut_with_eoi(2000),
        "png palette, 300 tRNS entries": png_palette_trns_overflow,
        "honest jpeg 7000^2 (49 MP)": lambda: jpeg_large(7000),
        "honest progressive jpeg 7000^2": lambda: jpeg_large(7000, progressive=True),
        "progressive 7000^2, 64 scans, <=40 MiB": lambda: jpeg_most_scans(7000, full),
        "honest rgba png 7000^2": lambda: png_rgba_large(7000),
        "rgba png 7000^2, most chunks allowed": lambda: png_most_chunks(7000),
    }


def sandbox_overhead(repeats: int = 5) -> None:
    """Median wall time of ``decode_inputs`` (a 12 MP JPEG photo and its PNG mask) in this
    process and through the sandbox: the per-job cost of the last line of defence."""
    import statistics

    from inpaint.photo import decoding
    from inpaint.photo.mask import decode_inputs

    limits = decoding.ImageLimits(max_bytes=40 * MIB, max_pixels=50_000_000)
    photo = jpeg_large(3464)  # 12 MP, a phone photo
    mask_im = Image.new("L", (3464, 3464), 0)
    mask_im.paste(255, (1000, 1000, 2000, 2400))
    mask = encode(mask_im)
    decode_inputs(photo, mask, limits)  # starts the fork server
    for isolated in (False, True):
        decoding.ISOLATED = isolated
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decode_inputs(photo, mask, limits)
            times.append(time.perf_counter() - start)
        where = "sandboxed" if isolated else "in process"
        print(
            f"decode_inputs 12 MP JPEG + PNG mask, {where}: median {statistics.median(times):.3f} s"
        )
    decoding.ISOLATED = True


def main() -> None:
    from inpaint.errors import PermanentError
    from inpaint.photo import decoding, sandbox

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parser.add_argument("--overhead", action="store_true", help="only the sandbox's per-job cost")
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args()
    if args.overhead:
        sandbox_overhead()
        return
    limits = decoding.ImageLimits(max_bytes=40 * MIB, max_pixels=50_000_000)
    print(f"{'case':40} {'bytes':>10} {'outcome':10} {'wall s':>7} {'worker MiB':>10}  message")
    for name, build in worst_cases(args.scale).items():
        if args.only and args.only not in name:
            continue
        data = build()
        start = time.perf_counter()
        try:
            image = decoding.decode_photo(data, limits)
            outcome, message = "accepted", f"{image.size[0]}x{image.size[1]}"
        except PermanentError as e:
            outcome, message = "refused", e.message
        wall = time.perf_counter() - start
        peak = sandbox.last_peak_bytes() / MIB
        print(f"{name:40} {len(data):>10} {outcome:10} {wall:7.2f} {peak:10.0f}  {message[:90]}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"benchmark process peak RSS: {own:.0f} MiB")


if __name__ == "__main__":
    main()
