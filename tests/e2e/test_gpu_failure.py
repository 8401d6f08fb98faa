"""A GPU that fails under jobs, against the real stack: the job is redelivered by Pub/Sub (not
failed, not acknowledged), the instance reports itself broken on /health so Cloud Run replaces
it, and the redeliveries that still reach it spend no attempt. The failure is injected by
``tests/data/gpu_fault/sitecustomize.py`` (the pipeline raises CUDA's illegal memory access
after warm-up); the decision itself is table-tested in tests/model/test_gpuhealth.py."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import wait_for

FAULT = Path(__file__).resolve().parent.parent / "data" / "gpu_fault"


def test_a_fatal_cuda_error_breaks_the_instance_and_the_job_is_redelivered(
    start_server, sessions, stack
):
    server = start_server(PYTHONPATH=str(FAULT), GPU_FAULT_AFTER="1")  # warm-up passes
    assert server.get("/health").status_code == 200
    stack.create_topic("gpu-fault")
    stack.create_push_subscription("gpu-fault", "push-to-broken", server.url + "/")
    try:
        user, session = sessions.create()
        stack.publish("gpu-fault", {"userId": user, "sessionId": session})
        wait_for(
            lambda: server.get("/health").status_code == 503,
            timeout=300,
            interval=0.1,
            what="/health never turned 503",
        )
        health = server.get("/health").json()
        assert health["model"] == "broken" and "illegal memory access" in health["error"]
        assert server.get("/ready").status_code == 503

        def refused_again() -> bool:
            return "this instance's GPU failed" in server.log_text()

        wait_for(
            refused_again, timeout=300, interval=0.1, what="no redelivery was refused"
        )  # Pub/Sub's own redelivery
        doc = sessions.doc(user, session)
        assert doc["processingStatus"] == "processing"  # not failed: another instance paints it
        assert "illegal memory access" in doc["lastError"]
        assert doc["attempts"] == 1  # the refused redeliveries claimed nothing
    finally:
        stack.delete_subscription("push-to-broken")
