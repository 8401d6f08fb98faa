"""The weights directory's layout: the one definition the downloader, the random model
builders and the model loader share (file names, quantizations, what a complete directory holds).

    DIR/base/                       black-forest-labs/FLUX.1-Fill-dev without transformer weights
    DIR/flux1-fill-dev-<QUANT>.gguf the transformer
    DIR/prompt-embeddings/          precomputed prompt embeddings (``inpaint.model.prompts``)

Standard library only: imported by the settings, the CLI and the loader alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Quant = Literal["Q3_K_S", "Q4_0", "Q4_1", "Q4_K_S", "Q5_0", "Q5_1", "Q5_K_S", "Q6_K", "Q8_0"]
QUANTS: tuple[str, ...] = Quant.__args__  # type: ignore[attr-defined]

#: The transformer's weights come from the GGUF file; only its config is needed (diffusers builds
#: the module from it: the GGUF file carries no usable config).
TRANSFORMER_FILES = ("transformer/config.json",)


def gguf_filename(quant: str) -> str:
    """File name used by YarvixPA/FLUX.1-Fill-dev-gguf and by our weights directory."""
    return f"flux1-fill-dev-{quant}.gguf"


def missing_files(base_dir: Path, gguf_path: Path, *, text_encoders: bool = True) -> list[Path]:
    """Files the loader needs that are absent from a weights directory ([] when complete).

    ``text_encoders=False`` skips CLIP, T5 and their tokenizers (a ``--no-text-encoders``
    directory, whose prompts are all precomputed).

    Accepts what both the real repository and the tiny test model contain: a component's
    weights as one safetensors file or as an index plus every shard it names; CLIP's tokenizer
    as vocab.json + merges.txt or tokenizer.json; T5's as spiece.model or tokenizer.json.
    """
    missing: list[Path] = []
    if not gguf_path.is_file():
        missing.append(gguf_path)
    text_files = (
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer_2/tokenizer_config.json",
    )
    for name in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        *TRANSFORMER_FILES,
        "vae/config.json",
        *(text_files if text_encoders else ()),
    ):
        if not (base_dir / name).is_file():
            missing.append(base_dir / name)
    missing += _missing_weights(base_dir / "vae", "diffusion_pytorch_model")
    if not text_encoders:
        return missing
    missing += _missing_weights(base_dir / "text_encoder", "model")
    missing += _missing_weights(base_dir / "text_encoder_2", "model")
    clip = base_dir / "tokenizer"
    if not (clip / "tokenizer.json").is_file():
        missing += [p for p in (clip / "vocab.json", clip / "merges.txt") if not p.is_file()]
    t5 = base_dir / "tokenizer_2"
    if not (t5 / "tokenizer.json").is_file() and not (t5 / "spiece.model").is_file():
        missing.append(t5 / "spiece.model")
    return missing


def _missing_weights(folder: Path, stem: str) -> list[Path]:
    """A component's safetensors: one file, or an index plus every shard it names."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return []
    if not index.is_file():
        return [single]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return [index]
    return [folder / shard for shard in shards if not (folder / shard).is_file()]
