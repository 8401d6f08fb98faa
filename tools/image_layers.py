"""What is inside a built image: the content of its layers, searched and measured.

Split from tools/image.py (which builds and runs the image). Used by the container tests (a
build secret must be in no layer) and by benchmarks/image_bench.py (size per layer group).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from tools.engine import DOCKER, Engine, ImageError


def image_layers(engine: Engine, ref: str) -> list[dict[str, object]]:
    """``docker history`` of ``ref`` (newest first) as dicts: CreatedBy, Size (bytes), ..."""
    out = engine.docker("history", "--no-trunc", "--human=false", "--format", "{{json .}}", ref)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def layer_group(created_by: str) -> str:
    """Which part of the image a history entry belongs to: ``base`` (the Python image and the
    user), ``packages`` (pinned requirements), ``weights`` (/models) or ``code``."""
    text = created_by.removeprefix("/bin/sh -c ").strip()
    if "/models /models" in text:
        return "weights"
    if "requirements" in text or "pip install" in text:
        return "packages"
    if any(word in text for word in ("inpaint/", "main.py", "compileall", "USER", "CMD", "EXPOSE")):
        return "code"
    if "INPAINT_MODEL_DIR" in text or "WORKDIR /app" in text:
        return "code"
    return "base"


_CHUNK = 1 << 20


def walk_saved_image(
    engine: Engine, ref: str, visit: Callable[[str, str, object], None], *, layers: bool = True
) -> None:
    """Streams ``docker save REF`` and calls ``visit(layer, path, item)`` for every member of
    every layer (layer = the layer tar's name; item = its TarInfo, then a file object for its
    content) and with a file object for the image's own files (layer ""; with ``layers=False``
    the layer tars are handed over whole too)."""
    proc = subprocess.Popen([str(DOCKER), "save", ref], stdout=subprocess.PIPE, env=engine.env())
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
            for member in outer:
                handle = outer.extractfile(member)
                if handle is None:
                    continue
                if not layers or not member.name.endswith("layer.tar"):
                    visit("", member.name, handle)
                    continue
                with tarfile.open(fileobj=handle, mode="r|") as layer:
                    for item in layer:
                        visit(member.name, item.name, item)
                        if item.isfile():
                            visit(member.name, item.name, layer.extractfile(item))
    finally:
        proc.stdout.close()
        if proc.wait(120) != 0:
            raise ImageError(f"docker save {ref} failed ({proc.returncode})")


def layer_dirs(engine: Engine, ref: str) -> list[Path]:
    """The content of each of the image's layers as the engine stores it (overlay2 ``diff``
    directories, newest first): exactly what ``docker save`` / ``docker push`` put in the
    layer tars, readable without exporting gigabytes."""
    out = engine.docker("image", "inspect", "--format", "{{json .GraphDriver}}", ref).stdout
    driver = json.loads(out)
    if driver.get("Name") != "overlay2":
        raise ImageError(f"layer search needs the overlay2 storage driver, not {driver!r}")
    data = driver["Data"]
    dirs = [data.get("UpperDir", ""), *data.get("LowerDir", "").split(":")]
    return [Path(d) for d in dirs if d]


def find_in_image(engine: Engine, ref: str, needles: Sequence[str]) -> dict[str, list[str]]:
    """Where each needle occurs in the image: in any file of any layer (content, name or link
    target), in the image config (env, labels, cmd, history) or in ``docker history``.
    Needles found nowhere map to []."""
    found: dict[str, list[str]] = {n: [] for n in needles}
    dirs = layer_dirs(engine, ref)
    argv = ["grep", "-r", "-a", "-F", "-o", "-Z", *(f"-e{n}" for n in needles), *map(str, dirs)]
    proc = subprocess.run(argv, capture_output=True, timeout=1800)
    if proc.returncode not in (0, 1):
        raise ImageError(f"grep failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    for line in proc.stdout.split(b"\n"):
        path, sep, match = line.partition(b"\0")
        if sep and match.decode(errors="replace") in found:
            where = path.decode(errors="replace")
            if where not in found[match.decode()]:
                found[match.decode()].append(where)
    for layer in dirs:
        for folder, subdirs, files in os.walk(layer):
            for name in subdirs + files:
                path = Path(folder) / name
                target = os.readlink(path) if path.is_symlink() else ""
                for needle in needles:
                    if needle in name or needle in target:
                        found[needle].append(f"{path} (name or link)")
    texts = {
        "docker history": engine.docker("history", "--no-trunc", ref).stdout,
        "image config": engine.docker("image", "inspect", ref).stdout,
    }
    for needle in needles:
        found[needle] += [where for where, text in texts.items() if needle in text]
    return found


def layer_sizes(engine: Engine, ref: str) -> list[dict[str, object]]:
    """Per layer (oldest first): its history entry, group, uncompressed tar size and gzip size
    (level 6, as ``docker push`` compresses). Slow: it compresses the whole image."""
    sizes: dict[str, tuple[int, int]] = {}
    documents: dict[str, bytes] = {}

    def visit(layer: str, path: str, item: object) -> None:
        if layer:
            return
        if not path.endswith("layer.tar"):
            documents[path] = item.read()  # type: ignore[attr-defined]
            return
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        raw = compressed = 0
        while chunk := item.read(_CHUNK):  # type: ignore[attr-defined]
            raw += len(chunk)
            compressed += len(gz.compress(chunk))
        sizes[path] = (raw, compressed + len(gz.flush()))

    walk_saved_image(engine, ref, visit, layers=False)
    manifest = json.loads(documents["manifest.json"])[0]
    config = json.loads(documents[manifest["Config"]])
    history = [h for h in config["history"] if not h.get("empty_layer")]
    rows = []
    for index, name in enumerate(manifest["Layers"]):
        created = str(history[index].get("created_by", "")) if index < len(history) else "?"
        raw, gzipped = sizes[name]
        rows.append(
            {
                "layer": name,
                "created_by": created,
                "group": layer_group(created),
                "bytes": raw,
                "gzip_bytes": gzipped,
            }
        )
    return rows
