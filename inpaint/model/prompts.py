"""Precomputed prompt embeddings: the reader (keys, manifest, store), without torch.

Almost every job uses the default prompt, whose embeddings are a few megabytes, while computing them
needs T5-XXL (9.5 GB) and CLIP in memory. ``python -m inpaint weights`` (and the random model
builders, through the same ``inpaint.model.embeddings.write_embeddings``) stores them in the weights
directory::

    DIR/prompt-embeddings/manifest.json        the keys, and what the encoders' files were
    DIR/prompt-embeddings/<key digest>.safetensors   prompt_embeds (1, L, D) + pooled (1, D')

An entry is used only when its whole key matches what the service would compute now: the prompt
text, T5's sequence length, the encoders' compute dtype, and a fingerprint of the tokenizers'
and text encoders' files. Anything else is refused with the reason (``find_entry``), and the
service computes the embedding as it always did. The fingerprint hashes small files whole and
samples large ones (size, first MiB, 16 spread 64 KiB blocks, last 64 KiB), so checking it at
start-up reads a few MiB instead of T5's 9.5 GB; any real change of weights (another checkpoint,
another random seed) changes every block. A directory built with ``--no-text-encoders`` has no
encoder files left: its manifest keeps the fingerprint and sequence length they had.

The writer, which runs the text encoders, is ``inpaint.model.embeddings``; this module imports
no torch (``EmbeddingStore.load`` imports safetensors' torch reader when a tensor is read).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inpaint.config import Settings

log = logging.getLogger(__name__)

STORE_DIR = "prompt-embeddings"
MANIFEST_NAME = "manifest.json"
STORE_VERSION = 1
#: The folders of ``base/`` that turn a prompt into embeddings (what the fingerprint covers,
#: and what ``--no-text-encoders`` leaves out).
TEXT_PARTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")
# FLUX's T5 context length; a tokenizer with a shorter model_max_length (the tiny model) lowers it.
MAX_SEQUENCE_LENGTH = 512

_WHOLE_FILE_BYTES = 8 << 20
_HEAD_BYTES = 1 << 20
_BLOCK_BYTES = 64 << 10
_BLOCKS = 16


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything an embedding depends on; equal keys give bit-identical embeddings on CPU."""

    prompt: str
    max_sequence_length: int
    fingerprint: str
    dtype: str

    def file_name(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32] + ".safetensors"


def find_entry(
    wanted: EmbeddingKey, entries: Sequence[EmbeddingKey]
) -> tuple[EmbeddingKey | None, str]:
    """The stored entry equal to ``wanted``, or None and why none is usable (for the log).

    The reason names the closest entry's first differing field, so an operator can tell "the
    prompt was changed by the environment" from "the encoder files were replaced".
    """
    if wanted in entries:
        return wanted, "precomputed"
    same_prompt = [e for e in entries if e.prompt == wanted.prompt]
    if not entries:
        return None, "no precomputed prompt embeddings in the weights directory"
    if not same_prompt:
        return None, "this prompt is not among the precomputed ones"
    entry = same_prompt[0]
    if entry.fingerprint != wanted.fingerprint:
        return None, (
            "the precomputed embedding was made from other tokenizer/text encoder files "
            f"(fingerprint {entry.fingerprint[:12]}, these files {wanted.fingerprint[:12]})"
        )
    if entry.max_sequence_length != wanted.max_sequence_length:
        return None, (
            f"the precomputed embedding has {entry.max_sequence_length} tokens, the service "
            f"uses {wanted.max_sequence_length}"
        )
    dtypes = sorted({e.dtype for e in same_prompt})
    return (
        None,
        f"the precomputed embedding is in {', '.join(dtypes)}, the service runs {wanted.dtype}",
    )


def file_digest(path: Path) -> str:
    """sha256 of a small file, or of a large file's size and sampled blocks (see the module)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}:".encode())
    with path.open("rb") as handle:
        if size <= _WHOLE_FILE_BYTES:
            digest.update(handle.read())
            return digest.hexdigest()
        spread = [size * i // (_BLOCKS + 1) for i in range(1, _BLOCKS + 1)]
        samples = [(0, _HEAD_BYTES), *((o, _BLOCK_BYTES) for o in spread)]
        for offset, length in [*samples, (size - _BLOCK_BYTES, _BLOCK_BYTES)]:
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest.hexdigest()


def text_files_digests(base_dir: Path) -> dict[str, str] | None:
    """{relative path: digest} of every tokenizer/text encoder file; None if a folder is absent."""
    if not all((base_dir / part).is_dir() for part in TEXT_PARTS):
        return None
    found: dict[str, str] = {}
    for part in TEXT_PARTS:
        for path in sorted((base_dir / part).rglob("*")):
            if path.is_file():
                found[path.relative_to(base_dir).as_posix()] = file_digest(path)
    return found


def fingerprint_of(digests: Mapping[str, str]) -> str:
    blob = json.dumps(dict(sorted(digests.items()))).encode()
    return hashlib.sha256(blob).hexdigest()


def tokenizer_max_sequence_length(base_dir: Path) -> int | None:
    """T5's padded length as the pipeline uses it: min(512, tokenizer_2's model_max_length),
    read from its config without loading the tokenizer; None when the tokenizer is absent."""
    try:
        config = json.loads((base_dir / "tokenizer_2" / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    limit = config.get("model_max_length") if isinstance(config, dict) else None
    return min(MAX_SEQUENCE_LENGTH, int(limit)) if isinstance(limit, int | float) else 512


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records about a store."""

    fingerprint: str
    max_sequence_length: int
    text_encoders_included: bool
    entries: tuple[EmbeddingKey, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STORE_VERSION,
                "fingerprint": self.fingerprint,
                "maxSequenceLength": self.max_sequence_length,
                "textEncoders": "included" if self.text_encoders_included else "omitted",
                "entries": [{**asdict(e), "file": e.file_name()} for e in self.entries],
            },
            indent=2,
        )


def read_manifest(model_dir: Path) -> Manifest | None:
    """The store's manifest, or None when absent or unreadable (then nothing is precomputed)."""
    path = Path(model_dir) / STORE_DIR / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        if data.get("version") != STORE_VERSION:
            log.warning("prompt embeddings ignored: %s has version %s", path, data.get("version"))
            return None
        entries = tuple(
            EmbeddingKey(
                prompt=str(e["prompt"]),
                max_sequence_length=int(e["max_sequence_length"]),
                fingerprint=str(e["fingerprint"]),
                dtype=str(e["dtype"]),
            )
            for e in data["entries"]
        )
        return Manifest(
            fingerprint=str(data["fingerprint"]),
            max_sequence_length=int(data["maxSequenceLength"]),
            text_encoders_included=data.get("textEncoders") != "omitted",
            entries=entries,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("prompt embeddings ignored: cannot read %s: %s", path, exc)
        return None


class EmbeddingStore:
    """The precomputed embeddings of one weights directory, checked against its files.

    ``fingerprint`` and ``max_sequence_length`` describe the encoders the service would run now:
    from the files when they are present, else (``--no-text-encoders``) from the manifest.
    """

    def __init__(self, model_dir: Path, manifest: Manifest | None) -> None:
        self.root = Path(model_dir) / STORE_DIR
        self.manifest = manifest
        base = Path(model_dir) / "base"
        digests = text_files_digests(base)
        self.text_encoders_present = digests is not None
        self.text_encoders_omitted = (
            digests is None and manifest is not None and (not manifest.text_encoders_included)
        )
        if digests is not None:
            self.fingerprint: str | None = fingerprint_of(digests)
            self.max_sequence_length = tokenizer_max_sequence_length(base) or MAX_SEQUENCE_LENGTH
        elif manifest is not None:
            self.fingerprint = manifest.fingerprint
            self.max_sequence_length = manifest.max_sequence_length
        else:
            self.fingerprint, self.max_sequence_length = None, MAX_SEQUENCE_LENGTH

    @classmethod
    def open(cls, model_dir: Path) -> EmbeddingStore:
        return cls(model_dir, read_manifest(model_dir))

    def key(self, prompt: str, dtype: str) -> EmbeddingKey:
        return EmbeddingKey(prompt, self.max_sequence_length, self.fingerprint or "", dtype)

    def find(self, prompt: str, dtype: str) -> tuple[EmbeddingKey | None, str]:
        """The usable entry for ``prompt`` in ``dtype``, or None and why (see ``find_entry``)."""
        entries = self.manifest.entries if self.manifest else ()
        return find_entry(self.key(prompt, dtype), entries)

    def load(self, entry: EmbeddingKey, device: str) -> tuple[Any, Any]:
        """(prompt_embeds, pooled_prompt_embeds) of a found entry, on ``device``."""
        from safetensors.torch import load_file

        tensors = load_file(str(self.root / entry.file_name()), device=device)
        return tensors["prompt_embeds"], tensors["pooled_prompt_embeds"]


def deployment_prompts(extra: Iterable[str] = ()) -> list[str]:
    """The prompts a build precomputes: the default (``INPAINT_DEFAULT_PROMPT``), the
    deployment's ``INPAINT_EXTRA_PROMPTS``, then ``extra``; each once, in that order."""
    settings = Settings()
    return list(dict.fromkeys([settings.default_prompt, *settings.extra_prompts, *extra]))
