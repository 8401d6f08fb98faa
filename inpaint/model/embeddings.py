"""Writing precomputed prompt embeddings, the writer of what ``prompts`` reads: the text encoders
run here, next to the code that runs them for a job (``encoders``), so a stored embedding is what
a job would compute."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

# isort: split
import torch
from safetensors.torch import save_file

from inpaint.model.checks import resolve_dtype
from inpaint.model.encoders import encode_with, load_text_pipeline
from inpaint.model.prompts import (
    MANIFEST_NAME,
    STORE_DIR,
    TEXT_PARTS,
    EmbeddingKey,
    EmbeddingStore,
    Manifest,
    deployment_prompts,
    read_manifest,
)

log = logging.getLogger(__name__)


def write_builder_embeddings(model_dir: Path, dtypes: Iterable[str]) -> Manifest:
    """The random model builders' hook: the deployment's prompts, as the weights command."""
    return write_embeddings(model_dir, deployment_prompts(), dtypes)


def write_embeddings(
    model_dir: Path,
    prompts: Iterable[str],
    dtypes: Iterable[str] = ("bfloat16",),
    *,
    omit_text_encoders: bool = False,
) -> Manifest:
    """Computes and stores the embeddings of ``prompts`` in each of ``dtypes`` (on the CPU,
    with the production text pipeline), keeping entries that are still valid and dropping the
    ones made from other files; then, if asked, deletes the text encoders and tokenizers.

    Idempotent: entries already present are not recomputed (and nothing is loaded then).
    """
    model_dir = Path(model_dir)
    base = model_dir / "base"
    old = read_manifest(model_dir)
    store = EmbeddingStore(model_dir, old)
    if store.fingerprint is None:
        raise FileNotFoundError(f"no tokenizer/text encoder files under {base}")
    root = model_dir / STORE_DIR
    root.mkdir(parents=True, exist_ok=True)
    kept = [e for e in (old.entries if old else ()) if e.fingerprint == store.fingerprint]
    wanted = [store.key(p, d) for d in dict.fromkeys(dtypes) for p in dict.fromkeys(prompts)]
    todo = [k for k in wanted if k not in kept or not (root / k.file_name()).is_file()]
    if todo and not store.text_encoders_present:
        raise FileNotFoundError(
            f"cannot compute embeddings for {len(todo)} prompt(s): {base} has no text encoders"
        )
    for dtype in dict.fromkeys(k.dtype for k in todo):
        _compute(base, root, [k for k in todo if k.dtype == dtype], dtype)
    entries = tuple(dict.fromkeys([*kept, *todo]))
    for stale in root.glob("*.safetensors"):
        if stale.name not in {e.file_name() for e in entries}:
            stale.unlink()
    manifest = Manifest(
        fingerprint=store.fingerprint,
        max_sequence_length=store.max_sequence_length,
        text_encoders_included=not omit_text_encoders and store.text_encoders_present,
        entries=entries,
    )
    _write_atomic(root / MANIFEST_NAME, manifest.to_json() + "\n")
    if omit_text_encoders:
        for part in TEXT_PARTS:
            shutil.rmtree(base / part, ignore_errors=True)
        log.info("text encoders and tokenizers removed from %s", base)
    log.info(
        "prompt embeddings ready",
        extra={"entries": len(entries), "computed": len(todo), "dir": str(root)},
    )
    return manifest


def _compute(base: Path, root: Path, keys: Sequence[EmbeddingKey], dtype: str) -> None:
    text = load_text_pipeline(base, resolve_dtype(dtype, "cpu"))
    for key in keys:
        with torch.no_grad():
            embeds, pooled = encode_with(text, key.prompt, "cpu", key.max_sequence_length)
        partial = root / (key.file_name() + ".partial")
        tensors = {
            "prompt_embeds": embeds.contiguous(),
            "pooled_prompt_embeds": pooled.contiguous(),
        }
        # One metadata entry: safetensors writes several in a per-process random (hash map)
        # order, and the same weights must give the same bytes (image layers, caches).
        described = json.dumps({"dtype": key.dtype, "prompt": key.prompt}, sort_keys=True)
        save_file(tensors, str(partial), metadata={"embedding": described})
        partial.replace(root / key.file_name())
    del text


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.tmp")
    partial.write_text(text)
    partial.replace(path)
