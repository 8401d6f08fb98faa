"""The production image, built from the repository's Dockerfile with the tiny weights, run with
a real container engine the way Cloud Run runs it, against the local stack."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.container.conftest import TAG, run_in_image
from tests.e2e.test_function import SIZE, assert_completed
from tools.image import build, ensure_base, step_output, step_states
from tools.image_layers import find_in_image

# The first test that needs the image may wait for a cold build (minutes) in its setup.
pytestmark = pytest.mark.timeout(1800)

PROBE = """
import json, os, torch
def writable(path):
    try:
        open(os.path.join(path, ".probe"), "w").close()
        return True
    except OSError:
        return False
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cuda": torch.version.cuda, "torch": torch.__version__,
    "writable": {p: writable(p) for p in ("/models", "/app", "/app/inpaint", "/home/app", "/tmp")},
    "models": sorted(os.listdir("/models")),
}))
"""


def test_image_runs_as_uid_10001_with_cuda_torch_and_read_only_code_and_weights(image):
    """Read-only root filesystem with a tmpfs /tmp, as the serving tests run it."""
    out = image.engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        TAG,
        "python",
        "-c",
        PROBE,
    ).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    assert (facts["uid"], facts["gid"]) == (10001, 10001)
    assert facts["cuda"], f"CPU-only torch in the image: {facts['torch']}"
    assert facts["writable"] == {
        "/models": False,
        "/app": False,
        "/app/inpaint": False,
        "/home/app": False,
        "/tmp": True,
    }
    assert "base" in facts["models"] and "flux1-fill-dev-Q4_0.gguf" in facts["models"]


def test_image_files_are_owned_by_root_not_by_the_service_user(image):
    out = run_in_image(image, "find", "/models", "/app", "-user", "10001")
    assert out.strip() == ""


def test_health_200_while_loading_then_ready_503_then_200_on_a_read_only_root(run_container):
    container = run_container(INPAINT_WARMUP_STEPS="2")
    seen = container.wait_ready()
    assert seen[0] == (200, 503) and seen[-1] == (200, 200), seen
    assert container.get("/health").json()["model"] == "ready"
    logs = container.log_text()
    assert "Control server error" not in logs and "Read-only file system" not in logs, logs
    assert container.state()["Running"]


CACHES = r"""
import json, os, pathlib
found = {}
for var in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH", "XDG_CACHE_HOME"):
    path = pathlib.Path(os.environ[var]) / "probe"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ok")
    found[var] = str(path.parent)
print(json.dumps({"caches": found, "alloc": os.environ.get("PYTORCH_ALLOC_CONF"),
                  "device": os.environ.get("INPAINT_DEVICE")}))
"""


def test_image_requires_a_gpu_and_keeps_compile_caches_writable(image, run_container):
    """Without a GPU the image's own INPAINT_DEVICE=cuda refuses to start (/health 503 naming
    the setting, no retries), instead of getting ready on the CPU and timing out every job; its
    compile and kernel caches are writable on the read-only root, as the service user."""
    facts = json.loads(run_in_image(image, "python", "-c", CACHES).strip().splitlines()[-1])
    assert facts["device"] == "cuda"
    assert facts["alloc"] == "expandable_segments:True"
    assert all(path.startswith("/tmp/") for path in facts["caches"].values()), facts

    container = run_container(INPAINT_DEVICE=None)
    deadline = time.monotonic() + 180
    health = None
    while time.monotonic() < deadline:
        try:
            health = container.get("/health")
        except (requests.ConnectionError, requests.Timeout):
            health = None  # still starting
        if health is not None and health.status_code == 503:
            break
        time.sleep(0.1)
    assert health is not None and health.status_code == 503, container.log_text()[-3000:]
    assert health.json()["model"] == "failed"
    ready = container.get("/ready").json()
    assert "INPAINT_DEVICE=cuda" in ready["error"] and "no usable CUDA" in ready["error"], ready
    assert "attempt 2/" not in container.log_text()  # refused at once, not retried


def test_job_through_pubsub_push_into_the_container_completes(run_container, stack, sessions):
    container = run_container()
    container.wait_ready()
    stack.create_topic("session-processing")
    stack.create_push_subscription("session-processing", "push-to-container", container.url + "/")
    try:
        user, session = sessions.create()
        stack.publish("session-processing", {"userId": user, "sessionId": session})
        sessions.wait(user, session, timeout=120)
        assert_completed(sessions, user, session)
        assert sessions.image(user, session, "edited.jpg").size == SIZE
        records = [json.loads(x) for x in container.log_text().splitlines() if x.startswith("{")]
        assert any(r.get("message") == "job claimed" for r in records)
    finally:
        stack.delete_subscription("push-to-container")


def test_docker_stop_exits_cleanly_within_10_s_with_a_job_in_flight(run_container, stack, sessions):
    """SIGTERM mid-job: gunicorn's graceful timeout (8 s) ends it before Cloud Run's (and
    ``docker stop``'s) 10 s SIGKILL, so the exit code is 0, not 137."""
    container = run_container(
        INPAINT_STEPS="100", INPAINT_MAX_STEPS="100", INPAINT_WORK_MEGAPIXELS="1.0"
    )
    container.wait_ready()
    stack.create_topic("session-stop")
    stack.create_push_subscription("session-stop", "push-stop", container.url + "/")
    try:
        user, session = sessions.create()
        stack.publish("session-stop", {"userId": user, "sessionId": session})
        doc = sessions.wait(user, session, statuses=("processing",), timeout=120)
        # In flight: claimed, and not finished when the stop begins.
        assert doc["processingStatus"] == "processing"
        container.stop(grace_s=10)
    finally:
        stack.delete_subscription("push-stop")
    state = container.state()
    assert not state["Running"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, container.log_text())
    assert sessions.doc(user, session)["processingStatus"] != "completed"


def test_docker_stop_of_an_idle_container_exits_cleanly(run_container):
    container = run_container()
    container.wait_ready()
    container.stop(grace_s=10)
    state = container.state()
    assert (state["Running"], state["ExitCode"]) == (False, 0), container.log_text()


# Known to be in the image: a file name in /models, text inside /models/base/model_index.json,
# and an ENV value of the image config. They show the search below is not blind.
CONTROLS = (".random-model.json", "FluxFillPipeline", "INPAINT_MODEL_DIR=/models")


@pytest.fixture(scope="module")
def search(image) -> dict[str, list[str]]:
    return find_in_image(image.engine, TAG, [image.marker, *CONTROLS])


def test_the_build_secret_is_in_no_layer_and_not_in_the_history(image, search):
    assert search[image.marker] == []


def test_the_search_finds_names_contents_and_config_known_to_be_in_the_image(search):
    names, contents, config = (search[c] for c in CONTROLS)
    assert any(h.endswith("/models/.random-model.json (name or link)") for h in names), names
    assert any(h.endswith("/models/base/model_index.json") for h in contents), contents
    assert "image config" in config and "docker history" in config, config


def test_weights_stage_logs_are_single_json_lines(image):
    lines = step_output(image.result.log, "python -m inpaint tiny")
    states = step_states(image.result.log)
    ran = [t for t, s in states.items() if "python -m inpaint tiny" in t and s == "DONE"]
    if not ran:  # taken from the cache: run the same command in the image to see its output
        lines = run_in_image(
            image, "sh", "-c", "INPAINT_LOG_LEVEL=INFO python -m inpaint tiny --dest /tmp/m 2>&1"
        ).splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    plain = [line for line in lines if line.strip() and not line.startswith("{")]
    assert records, lines
    assert all("severity" in r and "message" in r for r in records)
    # Besides the log records, only the command's own result line (its stdout).
    assert len(plain) == 1 and plain[0].startswith("tiny model (diffusers, "), plain
    messages = [r["message"] for r in records]
    assert len(messages) == len(set(messages)), messages


WEIGHTS_IMAGE_TAG = "pawfect-edit-inpaint-weights:test"
FROM_WEIGHTS_IMAGE_TAG = "pawfect-edit-inpaint:test-from-weights-image"


def models_listing(built, tag: str) -> list[str]:
    """``sha256sum`` of every file under /models of ``tag``, sorted."""
    proc = built.engine.docker(
        "run", "--rm", "--network", "none", "--read-only", tag,
        "sh", "-c", "cd /models && find . -type f -exec sha256sum {} + | sort -k 2",
        timeout=300,
    )  # fmt: skip
    return proc.stdout.splitlines()


def test_cloud_builds_two_step_weights_image_path_builds_without_a_secret(image):
    """cloudbuild.yaml's path, with the tiny weights: the weights stage built as its own image
    (``--target weights-<kind>``), then the service image with WEIGHTS=image from it and no
    hf_token secret at all. No weights command runs in the second build, and /models is the
    same as in the image built in one step."""
    base = ensure_base(image.engine)
    weights = build(
        image.engine, tag=WEIGHTS_IMAGE_TAG, weights="tiny", target="weights-tiny", base=base
    )
    assert weights.tag == WEIGHTS_IMAGE_TAG
    service = build(
        image.engine,
        tag=FROM_WEIGHTS_IMAGE_TAG,
        weights="image",
        weights_image=WEIGHTS_IMAGE_TAG,
        base=base,
        secret=False,
    )
    ran = [t for t, s in step_states(service.log).items() if s == "DONE"]
    assert not [t for t in ran if "python -m inpaint" in t], ran
    assert WEIGHTS_IMAGE_TAG in service.log  # /models came from the weights image
    listing = models_listing(image, FROM_WEIGHTS_IMAGE_TAG)
    assert any(line.endswith("flux1-fill-dev-Q4_0.gguf") for line in listing), listing
    assert listing == models_listing(image, TAG)
