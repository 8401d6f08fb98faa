"""The environment the model's libraries need, set before any of them is imported.

Every module that imports torch, diffusers, transformers or torchao imports this one first
(``tests/test_imports.py`` checks it), so whichever of them a process imports first, the libraries
find the offline environment and their loggers print JSON. Importing this module imports torch,
diffusers and transformers; the rest of ``inpaint.model`` (the weights layout, the download, the
prompt reader, the parameters, the GPU's health) stays importable without them.
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
