"""Fault injection for tests/e2e/test_gpu_failure.py (never on the product's path).

Put this directory on a server process's PYTHONPATH: Python imports ``sitecustomize`` at start-up,
and this one makes FluxFillPipeline's call raise the error a broken GPU raises (a CUDA illegal
memory access) from its ``GPU_FAULT_AFTER``-th call on (0-based), so warm-up passes and the jobs
after it meet a dead device. Like the TCP proxies that cut the emulators, it changes the world
the service runs in, not the service.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "diffusers.pipelines.flux.pipeline_flux_fill"
_AFTER = int(os.environ.get("GPU_FAULT_AFTER", "1"))


def _patch(module) -> None:
    cls = module.FluxFillPipeline
    real = cls.__call__
    calls = [0]

    def call(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > _AFTER:
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return real(self, *args, **kwargs)

    cls.__call__ = call


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched_exec(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = patched_exec
        return spec


sys.meta_path.insert(0, _Finder())
