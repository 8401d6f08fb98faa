"""Fetching the weights: ``python -m inpaint weights``, exactly the files production needs.

``python -m inpaint weights --dest DIR --quant Q4_0`` writes::

    DIR/base/                     black-forest-labs/FLUX.1-Fill-dev without transformer weights
    DIR/flux1-fill-dev-Q4_0.gguf  the transformer, from YarvixPA/FLUX.1-Fill-dev-gguf

The base repository is gated (accept the licence on its Hub page, then use a read token) and holds
57 GB, of which we need ~10 GB: the transformer comes from the GGUF file instead of the 23 GB
diffusers shards, and the 23 GB BFL single-file checkpoint and the 335 MB ``ae`` are duplicates of
what we take. What the download must leave behind is ``inpaint.model.weights_layout``'s
``missing_files``, the same check the model loader runs, so the two cannot drift apart.
huggingface_hub and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from inpaint.model.weights_layout import QUANTS, TRANSFORMER_FILES, gguf_filename, missing_files

log = logging.getLogger(__name__)

BASE_REPO = "black-forest-labs/FLUX.1-Fill-dev"
GGUF_REPO = "YarvixPA/FLUX.1-Fill-dev-gguf"
#: Where Docker BuildKit mounts ``--secret id=hf_token``.
DEFAULT_TOKEN_FILE = Path("/run/secrets/hf_token")

# Components of the base pipeline that we take whole (their config, weights and tokenizer files).
BASE_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
# File kinds a diffusers/transformers component is made of; anything else (.bin/.onnx duplicates,
# images) is left behind.
_COMPONENT_SUFFIXES = (".json", ".safetensors", ".txt", ".model")
# Top-level files we keep: the pipeline's index, and the licence that travels with the weights.
_TOP_LEVEL_FILES = ("model_index.json", "LICENSE.md")


class WeightsDownloadError(RuntimeError):
    """The weights could not be fetched; the message says what to do about it."""


def select_base_files(repo_files: Iterable[str]) -> list[str]:
    """The files of FLUX.1-Fill-dev's repository that the service needs, sorted.

    Kept: model_index.json, LICENSE.md, transformer/config.json and every json / safetensors /
    txt / model file of the scheduler, both text encoders (T5's shards and index included),
    both tokenizers and the VAE. Dropped: the transformer's weights, the BFL checkpoints
    (``flux1-fill-dev.safetensors``, ``ae.safetensors``), docs, images and git files.
    """
    return sorted({name for name in repo_files if _is_base_file(name)})


def _is_base_file(name: str) -> bool:
    if name in _TOP_LEVEL_FILES or name in TRANSFORMER_FILES:
        return True
    component, sep, rest = name.partition("/")
    return (
        bool(sep)
        and component in BASE_COMPONENTS
        and "/" not in rest
        and name.endswith(_COMPONENT_SUFFIXES)
    )


def gguf_repo_file(quant: str) -> str:
    """The GGUF file for ``quant`` in YarvixPA/FLUX.1-Fill-dev-gguf (and in our directory)."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; expected one of {', '.join(QUANTS)}")
    return gguf_filename(quant)


def resolve_token(token: str | None = None, token_file: Path | None = None) -> str | None:
    """The Hub token: explicit, else from ``token_file``, else ``HF_TOKEN``, else the BuildKit
    secret at /run/secrets/hf_token when mounted. A token in a file keeps it out of the shell
    history and out of Docker image layers."""
    if token:
        return token.strip()
    if token_file is not None:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise WeightsDownloadError(f"cannot read the token file {token_file}: {exc}") from exc
        if not value:
            raise WeightsDownloadError(f"the token file {token_file} is empty")
        return value
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env
    if DEFAULT_TOKEN_FILE.is_file():
        value = DEFAULT_TOKEN_FILE.read_text().strip()
        return value or None
    return None


def download(dest: Path, quant: str, token: str | None) -> None:
    """Fetches the base files and the GGUF transformer into ``dest`` (the layout above).

    The base files come with one ``snapshot_download`` restricted to exactly the selected files
    (``allow_patterns``): in parallel, and re-running resumes (files already complete in
    ``local_dir`` are skipped).
    Raises WeightsDownloadError with the fix for the usual failure (gated repo, no token).
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from inpaint.logs import adopt_library_loggers

    adopt_library_loggers()  # one JSON line per record, not a plain copy as well

    filename = gguf_repo_file(quant)
    dest = Path(dest)
    base = dest / "base"
    base.mkdir(parents=True, exist_ok=True)
    repo = BASE_REPO
    try:
        listing = huggingface_hub.list_repo_files(repo, token=token)
        wanted = select_base_files(listing)
        _check_listing(wanted)
        log.info("downloading %d files of %s", len(wanted), repo)
        huggingface_hub.snapshot_download(
            repo, allow_patterns=[glob.escape(name) for name in wanted], local_dir=base, token=token
        )
        repo = GGUF_REPO
        log.info("downloading %s/%s", repo, filename)
        fetched = Path(huggingface_hub.hf_hub_download(repo, filename, local_dir=dest, token=token))
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        hint = "no token was given" if token is None else "the token has no access"
        raise WeightsDownloadError(
            f"cannot access {repo} ({hint}). {BASE_REPO} is gated: accept its licence on "
            f"https://huggingface.co/{BASE_REPO}, then pass a read token (HF_TOKEN, "
            f"--token-file, or the BuildKit secret hf_token). Hub said: {exc}"
        ) from exc
    target = dest / filename
    if fetched.resolve() != target.resolve():
        # A cache-based download returns a path elsewhere; the loader expects it in dest.
        target.unlink(missing_ok=True)
        shutil.copyfile(fetched, target)
    missing = missing_files(base, target)
    if missing:
        raise WeightsDownloadError(
            "download finished but these files are missing: " + ", ".join(map(str, missing))
        )
    log.info("weights ready in %s", dest)


def _check_listing(selected: list[str]) -> None:
    """Fails early (before gigabytes move) if the repository no longer looks like FLUX Fill."""
    needed = {"model_index.json", "transformer/config.json", "vae/config.json"}
    absent = sorted(needed - set(selected))
    if absent:
        raise WeightsDownloadError(
            f"{BASE_REPO} does not list {', '.join(absent)}; has the repository changed?"
        )


def add_embedding_options(parser: argparse.ArgumentParser) -> None:
    """The weights command's prompt-embedding options (see ``inpaint.model.prompts``)."""
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="also precompute this prompt (repeatable; besides INPAINT_DEFAULT_PROMPT and "
        "INPAINT_EXTRA_PROMPTS)",
    )
    parser.add_argument(
        "--embeddings-dtype",
        action="append",
        choices=("bfloat16", "float16", "float32"),
        help="dtype the service runs in (repeatable; default bfloat16, the GPU's)",
    )
    parser.add_argument(
        "--no-text-encoders",
        action="store_true",
        help="leave CLIP, T5 and their tokenizers out after precomputing (~9.7 GB less); "
        "jobs with any other prompt then fail",
    )
    parser.add_argument(
        "--embeddings-only",
        action="store_true",
        help="skip the download: (re)compute the embeddings of an existing --dest",
    )


def precompute_embeddings(args: argparse.Namespace) -> None:
    """Writes the prompt embeddings into ``args.dest`` (after the download)."""
    from inpaint.model.embeddings import (
        write_embeddings,  # torch: only when embeddings are computed
    )
    from inpaint.model.prompts import deployment_prompts

    write_embeddings(
        args.dest,
        deployment_prompts(args.prompt),
        args.embeddings_dtype or ["bfloat16"],
        omit_text_encoders=args.no_text_encoders,
    )
