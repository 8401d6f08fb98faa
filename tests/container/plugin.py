"""Builds the production image in the background while the rest of the suite runs.

A cold build takes minutes (mostly downloading and unpacking the CUDA torch packages), so it
starts as soon as the tests are collected, and the tests that need the image (all in
``IMAGE_MODULE``) run last. With pytest-xdist the controller process owns the build and the
engine: it starts them when a worker reports those tests, and writes the result to a file that
the workers' ``image`` fixture waits for (a worker attaches to the engine through its socket and
never stops it). Without xdist the one process does both. The engine is stopped at the end of
the session if this session started it.

Registered by ``tests/conftest.py`` so that the xdist controller, which loads only that
conftest, runs it too.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.engine import Engine
from tools.image import ROOT, BuildResult, build, ensure_base

TAG = "pawfect-edit-inpaint:test"
BUILD_LOG = ROOT / "build" / "image-test-build.log"
IMAGE_MODULE = "tests/container/test_container.py"
RESULT_KEY = "inpaint_image_result"


@dataclass
class Built:
    engine: Engine
    result: BuildResult
    marker: str  # the value of the hf_token secret the image was built with


class Preparation:
    """Starts the engine and builds the image in a thread; ``wait`` hands over the result and
    ``result_file`` (when given) receives it as JSON for other processes."""

    def __init__(self, result_file: Path | None = None) -> None:
        self.engine = Engine()
        self.marker = f"hf_marker_{secrets.token_hex(12)}"
        self.result: BuildResult | None = None
        self.error: BaseException | None = None
        self.timings: dict[str, float] = {}
        self.result_file = result_file
        self._thread = threading.Thread(target=self._run, name="image-build", daemon=True)

    def start(self) -> Preparation:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.engine.start()
            self.timings["engine"] = time.monotonic() - started
            base = ensure_base(self.engine)
            self.timings["base"] = time.monotonic() - started - self.timings["engine"]
            with tempfile.TemporaryDirectory(prefix="inpaint-secret-") as tmp:
                secret = Path(tmp) / "hf_token"
                secret.write_text(self.marker + "\n")
                self.result = build(
                    self.engine, tag=TAG, weights="tiny", secret_file=secret, base=base
                )
            self.timings["build"] = self.result.seconds
            BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
            BUILD_LOG.write_text(self.result.log)
        except BaseException as exc:  # handed to the tests that need the image
            self.error = exc
        finally:
            self._publish()

    def _publish(self) -> None:
        if self.result_file is None:
            return
        if self.result is not None:
            record: dict[str, Any] = {
                "tag": self.result.tag,
                "seconds": self.result.seconds,
                "log": str(BUILD_LOG),
                "marker": self.marker,
            }
        else:
            record = {"error": f"{type(self.error).__name__}: {self.error}"}
        partial = self.result_file.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.result_file)  # the waiting workers see it whole or not at all

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items())
        return f"image preparation: {parts or 'not finished'} (build log: {BUILD_LOG})"

    def wait(self) -> Built:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return Built(self.engine, self.result, self.marker)

    def stop(self) -> None:
        self._thread.join()
        self.engine.stop()


def wait_for_result_file(path: Path, timeout_s: float) -> Built:
    """A worker's view of the controller's build: waits for the file, attaches to the engine."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the image build did not report within {timeout_s} s ({path})")
        time.sleep(0.5)
    record = json.loads(path.read_text())
    if "error" in record:
        raise RuntimeError(f"the image build failed: {record['error']} (log: {BUILD_LOG})")
    log = Path(record["log"]).read_text()
    result = BuildResult(tag=record["tag"], log=log, seconds=record["seconds"])
    return Built(Engine().start(), result, record["marker"])


def needs_image(item: pytest.Item) -> bool:
    return "image" in getattr(item, "fixturenames", ())


class ImageBuildPlugin:
    """The hooks; one instance per pytest process (controller, worker or the only one)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.preparation: Preparation | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        workerinput = getattr(config, "workerinput", None)
        self.worker_result = Path(workerinput[RESULT_KEY]) if workerinput else None

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def result_file(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="inpaint-image-result-")
        return Path(self._tmp.name) / "result.json"

    def start(self) -> None:
        if self.preparation is None:
            self.preparation = Preparation(self.result_file()).start()

    # -- every process ----------------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """The tests that need the image go last (it builds in the background meanwhile)."""
        stray = [i.nodeid for i in items if needs_image(i) and IMAGE_MODULE not in i.nodeid]
        if stray:
            raise pytest.UsageError(f"tests that need the image belong in {IMAGE_MODULE}: {stray}")
        items[:] = [i for i in items if not needs_image(i)] + [i for i in items if needs_image(i)]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.is_worker and any(needs_image(i) for i in session.items):
            self.start()  # without xdist: this process runs the tests and the build

    def pytest_sessionfinish(self) -> None:
        if self.preparation is not None:
            self.preparation.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.preparation is not None:
            terminalreporter.write_line(self.preparation.summary())

    def built(self) -> Built:
        """For the ``image`` fixture: the result of this process's or the controller's build."""
        if self.worker_result is not None:
            return wait_for_result_file(self.worker_result, timeout_s=1500)
        self.start()
        assert self.preparation is not None
        return self.preparation.wait()

    # -- the xdist controller ---------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RESULT_KEY] = str(self.result_file())

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if any(IMAGE_MODULE in nodeid for nodeid in ids):
            self.start()
