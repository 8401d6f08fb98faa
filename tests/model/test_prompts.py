"""Precomputed prompt embeddings and text encoders on demand (inpaint.model.prompts, InpaintModel).

The tiny model's builder writes the default prompt's embeddings (float32 for the CPU, bfloat16
for a GPU), exactly as ``python -m inpaint weights`` does. Device pinned to the CPU: the
bit-identity claims are about the CPU (a GPU's kernels round differently from the CPU that
precomputed the embeddings).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from inpaint.cli import main as cli_main
from inpaint.config import DEFAULT_PROMPT
from inpaint.errors import ModelFilesMissingError, PromptUnavailableError
from inpaint.model import prompts
from inpaint.model.embeddings import write_embeddings
from inpaint.model.inpainter import InpaintModel
from inpaint.model.params import GenerationParams
from inpaint.model.prompts import EmbeddingKey, EmbeddingStore, find_entry
from tests.helpers import tiny_settings
from tests.samples import ramp_inputs

KEY = EmbeddingKey("a cat", 512, "f" * 64, "bfloat16")


@pytest.mark.parametrize(
    ("entries", "found", "reason"),
    [
        ([KEY], True, "precomputed"),
        ([], False, "no precomputed prompt embeddings"),
        ([EmbeddingKey("a dog", 512, "f" * 64, "bfloat16")], False, "not among the precomputed"),
        (
            [EmbeddingKey("a cat", 512, "0" * 64, "bfloat16")],
            False,
            "other tokenizer/text encoder files (fingerprint 000000000000, these files ffff",
        ),
        ([EmbeddingKey("a cat", 256, "f" * 64, "bfloat16")], False, "has 256 tokens"),
        (
            [EmbeddingKey("a cat", 512, "f" * 64, "float32")],
            False,
            "is in float32, the service runs bfloat16",
        ),
    ],
)
def test_find_entry_uses_only_an_exact_key(entries, found, reason):
    entry, why = find_entry(KEY, entries)
    assert (entry == KEY) if found else entry is None
    assert reason in why


def test_file_digest_samples_large_files(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8))
    big.write_bytes(data)
    first = prompts.file_digest(big)
    data[len(data) // 2] ^= 1  # between samples: the documented trade-off (reads stay small)
    big.write_bytes(data)
    assert prompts.file_digest(big) == first
    data[len(data) * 8 // 17 + 10] ^= 1  # inside the 8th of 16 spread blocks
    big.write_bytes(data)
    assert prompts.file_digest(big) != first
    small = tmp_path / "small.json"
    small.write_text("{}")
    before = prompts.file_digest(small)
    small.write_text("{ }")
    assert prompts.file_digest(small) != before


def job(model: InpaintModel, prompt: str = DEFAULT_PROMPT, seed: int = 7) -> np.ndarray:
    params = GenerationParams(prompt=prompt, seed=seed, steps=2, guidance=30.0)
    return np.asarray(model.generate(*ramp_inputs(), params))


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model (tests here change its files)."""
    dest = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns(".random-model.lock"))
    return dest


def test_builder_writes_the_default_prompt_keyed_by_its_files(tiny_model_dir):
    manifest = prompts.read_manifest(tiny_model_dir)
    store = EmbeddingStore.open(tiny_model_dir)
    assert manifest is not None and manifest.text_encoders_included
    assert manifest.fingerprint == store.fingerprint and store.max_sequence_length == 32
    assert {(e.prompt, e.dtype) for e in manifest.entries} >= {
        (DEFAULT_PROMPT, "float32"),
        (DEFAULT_PROMPT, "bfloat16"),
    }
    tensors = load_file(
        tiny_model_dir / prompts.STORE_DIR / store.key(DEFAULT_PROMPT, "float32").file_name()
    )
    assert tensors["prompt_embeds"].shape == (1, 32, 32)
    assert tensors["pooled_prompt_embeds"].shape == (1, 32)


def test_the_same_files_give_the_same_embedding_bytes(model_copy, tmp_path):
    """Two builds of the same weights write byte-identical embedding files (image layers and
    the two-step Cloud Build path compare them). safetensors writes several metadata entries in
    a random order per write, so six files would all match by chance once in 64 builds."""
    other = tmp_path / "other"
    shutil.copytree(model_copy, other)
    wanted = [f"a cat number {i}" for i in range(6)]
    for model_dir in (model_copy, other):
        write_embeddings(model_dir, wanted, ["float32"])
    files = sorted((model_copy / prompts.STORE_DIR).glob("*.safetensors"))
    assert len(files) >= len(wanted)
    for path in files:
        assert path.read_bytes() == (other / prompts.STORE_DIR / path.name).read_bytes()


def test_ready_without_text_encoders_and_default_prompt_never_loads_them(tiny_model_dir):
    model = InpaintModel.load(tiny_settings(tiny_model_dir))
    model.warm_up()
    job(model)
    assert not model.prompts.text_encoders_loaded and model.prompts.loads == 0
    assert model.pipe.text_encoder is None and model.pipe.text_encoder_2 is None


def test_default_prompt_output_is_bit_identical_to_computing_it(tiny_model_dir):
    precomputed = InpaintModel.load(tiny_settings(tiny_model_dir))
    computed = InpaintModel.load(tiny_settings(tiny_model_dir, prompt_embeddings=False))
    assert computed.prompts.text_encoders_loaded and not precomputed.prompts.text_encoders_loaded
    for stored, fresh in zip(
        precomputed.prompts.encode(DEFAULT_PROMPT),
        computed.prompts.encode(DEFAULT_PROMPT),
        strict=True,
    ):
        assert stored.dtype == fresh.dtype and torch.equal(stored, fresh)
    assert np.array_equal(job(precomputed), job(computed))


def test_a_custom_prompt_loads_the_encoders_once(tiny_model_dir):
    model = InpaintModel.load(tiny_settings(tiny_model_dir))
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda p=p: results.append(job(model, p)))
        for p in ("a dog on a sofa", "a cat on a sofa")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and model.prompts.loads == 1
    job(model, "a pet with fur")
    job(model, DEFAULT_PROMPT)
    assert model.prompts.loads == 1
    # The prompt cache still holds the computed prompts (and the precomputed default).
    assert model.prompts.is_cached("a dog on a sofa")
    assert model.prompts.is_cached(DEFAULT_PROMPT)


def test_background_loading_after_warm_up_is_a_setting(tiny_model_dir):
    model = InpaintModel.load(tiny_settings(tiny_model_dir, text_encoders_background=True))
    assert not model.prompts.text_encoders_loaded
    model.warm_up()
    assert model.prompts.background_load is not None
    model.prompts.background_load.join()
    assert model.prompts.text_encoders_loaded and model.prompts.loads == 1


def _poison_and_restamp(model_dir: Path, fingerprint: str) -> None:
    """Zeroes every stored tensor and claims the entries were made from other files."""
    root = model_dir / prompts.STORE_DIR
    manifest = json.loads((root / prompts.MANIFEST_NAME).read_text())
    manifest["fingerprint"] = fingerprint
    for entry in manifest["entries"]:
        old = root / entry["file"]
        tensors = {k: torch.zeros_like(v) for k, v in load_file(old).items()}
        old.unlink()
        entry["fingerprint"] = fingerprint
        key = EmbeddingKey(
            entry["prompt"], entry["max_sequence_length"], fingerprint, entry["dtype"]
        )
        entry["file"] = key.file_name()
        save_file(tensors, root / entry["file"])
    (root / prompts.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_stale_key_is_refused_logged_and_computed_instead(tiny_model_dir, model_copy, caplog):
    _poison_and_restamp(model_copy, "0" * 64)
    caplog.set_level(logging.INFO, logger="inpaint.model")
    stale = InpaintModel.load(tiny_settings(model_copy))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "other tokenizer/text encoder files" in messages
    assert stale.prompts.text_encoders_loaded  # computed as before the store existed
    today = InpaintModel.load(tiny_settings(tiny_model_dir, prompt_embeddings=False))
    assert np.array_equal(job(stale), job(today))  # the zeroed tensors were never used


def test_a_default_prompt_changed_by_the_environment_is_computed(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="inpaint.model")
    model = InpaintModel.load(tiny_settings(tiny_model_dir, default_prompt="a dog on a sofa"))
    assert model.prompts.text_encoders_loaded
    assert "this prompt is not among the precomputed ones" in caplog.text


def test_no_text_encoders_build_refuses_other_prompts(model_copy, monkeypatch):
    monkeypatch.delenv("INPAINT_EXTRA_PROMPTS", raising=False)
    code = cli_main(
        [
            "weights",
            "--dest",
            str(model_copy),
            "--embeddings-only",
            "--embeddings-dtype",
            "float32",
            "--prompt",
            "a dog on a sofa",
            "--no-text-encoders",
        ]
    )
    assert code == 0
    assert not any((model_copy / "base" / part).exists() for part in prompts.TEXT_PARTS)
    model = InpaintModel.load(tiny_settings(model_copy))
    model.warm_up()
    job(model)
    job(model, "a dog on a sofa")  # precomputed by --prompt
    with pytest.raises(PromptUnavailableError) as raised:
        job(model, "a cat on a sofa")
    assert raised.value.code == "prompt_unavailable"
    assert "paints only with its preset prompts" in raised.value.message
    assert model.prompts.loads == 0
    # A default prompt that was not precomputed cannot work at all: the start-up fails.
    with pytest.raises(ModelFilesMissingError, match="built without text encoders"):
        InpaintModel.load(tiny_settings(model_copy, default_prompt="something else"))


def test_extra_prompts_from_the_environment_are_precomputed(model_copy, monkeypatch):
    monkeypatch.setenv("INPAINT_EXTRA_PROMPTS", '["a cat on a sofa"]')
    assert prompts.deployment_prompts(["a dog"]) == [DEFAULT_PROMPT, "a cat on a sofa", "a dog"]
    manifest = write_embeddings(model_copy, prompts.deployment_prompts(), ["float32"])
    assert {e.prompt for e in manifest.entries} >= {DEFAULT_PROMPT, "a cat on a sofa"}
    model = InpaintModel.load(tiny_settings(model_copy))
    job(model, "a cat on a sofa")
    assert model.prompts.loads == 0
