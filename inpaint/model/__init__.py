"""FLUX.1-Fill-dev: loading, options, prompts, weights. The only product code that imports torch
and diffusers (with ``inpaint.randmodel``), so everything else (event handling, imaging,
Firestore) stays importable and testable without them.

The transformer comes from a GGUF file (Q4_0 is 6.8 GB instead of 23 GB), everything else from a
local diffusers copy of ``black-forest-labs/FLUX.1-Fill-dev`` written by ``python -m inpaint
weights``; nothing is ever fetched from the Hub at run time (a missing file is a deployment
error, named with its fix).

Rooms that import torch (each imports ``runtime`` first: the offline environment and the
libraries' JSON loggers, set before diffusers is imported): ``checks`` (files, device, dtype,
attention backend: refused before loading), ``encoders`` (prompt -> embeddings: cache,
precomputed store, CLIP and T5 on demand), ``embeddings`` (the writer of what ``prompts``
reads), ``mapped`` (the GGUF file as tensors viewing its memory map), ``layout`` (BFL names to
diffusers', by views), ``fp8`` (GGUF linears to float8 with torchao, ``INPAINT_FP8``),
``options`` (each speed-up setting as one object: when it is refused or ignored, how it is
applied, whether a GPU has proven it; the unproven ones are experimental) and ``inpainter``
(``InpaintModel``: loading as a short list of steps, seeding, ``generate``).

Rooms without torch (the settings, the serving path's start-up and the image's weights stage
import them): ``params`` (``GenerationParams``, ``ProgressCallback``), ``weights_layout`` (the
weights directory's layout), ``weights_download`` (``python -m inpaint weights``), ``prompts``
(the reader of precomputed prompt embeddings), ``flux_names`` (FLUX tensor names, diffusers'
against BFL's) and ``gpuhealth`` (whether the GPU is still sound). This file imports nothing:
import the names from their rooms (``from inpaint.model.inpainter import InpaintModel``).
"""
