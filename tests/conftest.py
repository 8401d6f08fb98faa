"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tools.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis profiles. "ci" (the default): a bounded, derandomized exploration, so a run is
# reproducible and fits the suite's time; no example database (a clean clone has none anyway).
# "long": many more examples, randomized, with the database (shrunk failures replay first):
# `pytest tests/sim --hypothesis-profile=long`. docs/reliability.md reports both.
settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    """The image build runs beside the suite; registered here because the xdist controller
    loads only this conftest."""
    from tests.container.plugin import ImageBuildPlugin

    config.pluginmanager.register(ImageBuildPlugin(config), "inpaint-image-build")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local Google stack (Firestore, Storage, Pub/Sub emulators), one per test process,
    its addresses in this process's environment while it runs."""
    from tools.stack import LocalStack

    with LocalStack(workdir=tmp_path_factory.mktemp("stack")) as running:
        running.apply_env()
        yield running
        running.restore_env()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A weights directory (``base/`` + Q8_0 and Q4_0 GGUF files) holding the tiny random FLUX
    Fill model in the diffusers key layout, for ``Settings(model_dir=..., quant=...)``.

    Built once into build/ and reused by later sessions (the builder's marker is keyed by its
    version, and a file lock serialises parallel sessions), so only the first run pays ~5 s.
    """
    from inpaint.randmodel import MODEL_VERSION, build_tiny_model

    dest = ROOT / "build" / f"tiny-model-v{MODEL_VERSION}"
    build_tiny_model(dest, layout="diffusers", quant="Q8_0")
    build_tiny_model(dest, layout="diffusers", quant="Q4_0")
    return dest
