"""FLUX.1-Fill-dev behind one small interface: load once, then ``generate`` per job.

This package is the only product code that imports torch and diffusers, so everything else
(event handling, imaging, Firestore) stays importable and testable without them. The transformer
comes from a GGUF file (Q4_0 is 6.8 GB instead of 23 GB), everything else from a local diffusers
copy of ``black-forest-labs/FLUX.1-Fill-dev`` written by ``python -m inpaint weights``; nothing is
ever fetched from the Hub at run time (a missing file is a deployment error, named with its fix).

Rooms: ``checks`` (files, device, dtype, attention backend: refused before loading),
``encoders`` (prompt -> embeddings: cache, precomputed store, CLIP and T5 on demand),
``embeddings`` (writes the precomputed store ``inpaint.prompts`` reads),
``mapped`` (the GGUF file as tensors viewing its memory map), ``layout`` (BFL names to
diffusers', by views), ``fp8`` (GGUF linears to float8 with torchao, ``INPAINT_FP8``),
``options`` (each speed-up setting as one object: when it is refused or ignored, how it is
applied, whether a GPU has proven it; the unproven ones are experimental) and ``inpainter``
(``InpaintModel``: loading as a short list of steps, seeding, ``generate``).
Importing any of them runs this file first, so the offline environment below is always set
before diffusers is imported.
"""

from __future__ import annotations

import os

# Before diffusers/transformers are imported: they read these at import time. Offline, because
# every file must come from the weights directory; no GGUF CUDA kernels, because diffusers would
# download their code from the Hub at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_GGUF_CUDA_KERNELS"] = "false"

# One JSON line per log record, also for what the libraries say while they load: torch has its
# own plain handler (importing torchao makes it warn), and diffusers and transformers install one
# when imported. So torch's records go to the root handler before diffusers (which imports
# torchao) is imported, and the others' right after.
import torch  # noqa: F401

from inpaint.logs import adopt_library_loggers

adopt_library_loggers(("torch",))

import diffusers  # noqa: F401
import transformers  # noqa: F401

adopt_library_loggers()

from inpaint.model.checks import (
    check_attention_backend,
    check_model_files,
    choose_device,
    compile_refusal,
    resolve_device,
    resolve_dtype,
    weights_command,
)
from inpaint.model.embeddings import write_builder_embeddings, write_embeddings
from inpaint.model.encoders import PromptEncoder, encode_with, load_text_pipeline
from inpaint.model.inpainter import SIZE_MULTIPLE, WARMUP_SIZE, InpaintModel
from inpaint.model.layout import is_bfl_layout, to_diffusers_layout
from inpaint.model.mapped import load_gguf_mapped

__all__ = [
    "SIZE_MULTIPLE",
    "WARMUP_SIZE",
    "InpaintModel",
    "PromptEncoder",
    "check_attention_backend",
    "check_model_files",
    "choose_device",
    "compile_refusal",
    "encode_with",
    "is_bfl_layout",
    "load_gguf_mapped",
    "load_text_pipeline",
    "resolve_device",
    "resolve_dtype",
    "to_diffusers_layout",
    "weights_command",
    "write_builder_embeddings",
    "write_embeddings",
]
