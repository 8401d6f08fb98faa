"""Which files the weights command fetches, and where it puts them (no network)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import httpx
import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError

from inpaint.config import Settings
from inpaint.model import weights_download
from inpaint.model.weights_layout import QUANTS, missing_files

# black-forest-labs/FLUX.1-Fill-dev as listed by the Hub (images: the README's illustrations).
REAL_REPO_FILES = [
    ".gitattributes",
    "LICENSE.md",
    "README.md",
    "ae.safetensors",
    "flux1-fill-dev.safetensors",
    "fill_example.png",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model-00001-of-00002.safetensors",
    "text_encoder_2/model-00002-of-00002.safetensors",
    "text_encoder_2/model.safetensors.index.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]

EXPECTED = [
    "LICENSE.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model-00001-of-00002.safetensors",
    "text_encoder_2/model-00002-of-00002.safetensors",
    "text_encoder_2/model.safetensors.index.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


def test_selects_everything_but_the_transformer_weights():
    assert weights_download.select_base_files(REAL_REPO_FILES) == EXPECTED


def test_selection_ignores_order_duplicates_and_foreign_files():
    noisy = [
        *reversed(REAL_REPO_FILES),
        "vae/diffusion_pytorch_model.bin",  # a .bin duplicate of the safetensors
        "text_encoder/flax_model.msgpack",
        "tokenizer/nested/extra.json",
        "transformer/diffusion_pytorch_model.fp16.safetensors",
        "docs/notes.md",
        "model_index.json",
    ]
    assert weights_download.select_base_files(noisy) == EXPECTED


def test_gguf_file_name_per_quant():
    assert weights_download.gguf_repo_file("Q4_0") == "flux1-fill-dev-Q4_0.gguf"
    assert [weights_download.gguf_repo_file(q) for q in QUANTS][-1] == "flux1-fill-dev-Q8_0.gguf"
    with pytest.raises(ValueError, match="Q2_K"):
        weights_download.gguf_repo_file("Q2_K")


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(weights_download, "DEFAULT_TOKEN_FILE", tmp_path / "absent")
    assert weights_download.resolve_token() is None
    secret = tmp_path / "hf_token"
    secret.write_text("hf_from_file\n")
    assert weights_download.resolve_token(token_file=secret) == "hf_from_file"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert weights_download.resolve_token() == "hf_from_env"
    assert weights_download.resolve_token(token_file=secret) == "hf_from_file"
    assert weights_download.resolve_token("hf_explicit") == "hf_explicit"
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(weights_download, "DEFAULT_TOKEN_FILE", secret)  # the BuildKit mount
    assert weights_download.resolve_token() == "hf_from_file"
    with pytest.raises(weights_download.WeightsDownloadError, match="cannot read"):
        weights_download.resolve_token(token_file=tmp_path / "nope")


class FakeHub:
    """Stands in for the huggingface_hub calls: serves REAL_REPO_FILES and writes each
    requested file under local_dir (tiny contents, a consistent T5 index); a snapshot download
    fetches the listed files its allow_patterns match, as huggingface_hub does."""

    def __init__(self, gguf_elsewhere: Path | None = None):
        self.calls: list[tuple[str, str, str | None]] = []
        self.listed: list[tuple[str, str | None]] = []
        self.gguf_elsewhere = gguf_elsewhere

    def list_repo_files(self, repo_id, *, token=None, **_):
        self.listed.append((repo_id, token))
        assert repo_id == weights_download.BASE_REPO
        return list(REAL_REPO_FILES)

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, token=None, **_):
        assert repo_id == weights_download.BASE_REPO and allow_patterns
        for name in sorted(REAL_REPO_FILES):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                self.hf_hub_download(repo_id, name, local_dir=local_dir, token=token)
        return str(local_dir)

    def hf_hub_download(self, repo_id, filename, *, local_dir=None, token=None, **_):
        self.calls.append((repo_id, filename, token))
        if repo_id == weights_download.GGUF_REPO and self.gguf_elsewhere is not None:
            path = self.gguf_elsewhere / filename  # like a cache-based download
        else:
            path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename == "text_encoder_2/model.safetensors.index.json":
            shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
            path.write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
        else:
            path.write_bytes(b"x")
        return str(path)


def test_download_writes_the_layout_the_loader_reads(tmp_path, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "list_repo_files", hub.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    dest = tmp_path / "weights"
    weights_download.download(dest, "Q4_0", "hf_secret")

    assert hub.listed == [(weights_download.BASE_REPO, "hf_secret")]
    base_calls = [(f, t) for r, f, t in hub.calls if r == weights_download.BASE_REPO]
    assert base_calls == [(name, "hf_secret") for name in EXPECTED]
    assert hub.calls[-1] == (weights_download.GGUF_REPO, "flux1-fill-dev-Q4_0.gguf", "hf_secret")
    settings = Settings(model_dir=dest, quant="Q4_0")
    assert settings.gguf_path == dest / "flux1-fill-dev-Q4_0.gguf" and settings.gguf_path.is_file()
    assert (settings.base_dir / "transformer" / "config.json").is_file()
    assert not list(settings.base_dir.glob("transformer/*.safetensors"))
    assert not (settings.base_dir / "flux1-fill-dev.safetensors").exists()
    assert missing_files(settings.base_dir, settings.gguf_path) == []


def test_download_moves_a_gguf_fetched_elsewhere_into_place(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    hub = FakeHub(gguf_elsewhere=cache)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", hub.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    weights_download.download(tmp_path / "w", "Q8_0", None)
    assert (tmp_path / "w" / "flux1-fill-dev-Q8_0.gguf").read_bytes() == b"x"
    assert all(token is None for _, _, token in hub.calls)


def test_gated_repo_error_says_what_to_do(tmp_path, monkeypatch):
    def gated(repo_id, **_):
        request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        response = httpx.Response(401, request=request)
        raise GatedRepoError("401 Client Error: access is restricted", response=response)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", gated)
    with pytest.raises(weights_download.WeightsDownloadError, match="accept its licence") as info:
        weights_download.download(tmp_path, "Q4_0", None)
    assert "no token was given" in str(info.value) and "--token-file" in str(info.value)


def test_missing_files_reports_what_the_loader_needs(tmp_path):
    base = tmp_path / "base"
    missing = {str(p.relative_to(tmp_path)) for p in missing_files(base, tmp_path / "f.gguf")}
    assert {"f.gguf", "base/model_index.json", "base/transformer/config.json"} <= missing
    assert "base/vae/diffusion_pytorch_model.safetensors" in missing
    assert "base/tokenizer/vocab.json" in missing and "base/tokenizer_2/spiece.model" in missing
