"""The delivery settings fit together: Cloud Run's concurrency, the instance's admission bound,
gunicorn's threads, the request timeout, the subscription's ack deadline, retry delays and
dead-letter attempts, the event age limit, and the burst the deployment is said to absorb.

The burst figures come from ``benchmarks/burst_sim.py`` (a deterministic discrete-event
simulation of the documented Pub/Sub and Cloud Run rules, seeded), run here with the settings
read from the deployment files, so changing one of them without the others fails this test.
"""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest
import yaml

from benchmarks.burst_sim import (
    L4_JOB_S,
    L4_LONGEST_JOB_S,
    SUPPORTED_BURST_PER_INSTANCE,
    Rules,
    Scenario,
    simulate,
)
from inpaint.config import Settings
from tests.deploy.test_cloudbuild import deploy_args
from tools.deploy import DEFAULT_GPU, GPU_PROFILES

ROOT = Path(__file__).resolve().parents[2]
CLOUDBUILD = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()


def _deploy_flags(gpu: str = DEFAULT_GPU) -> dict[str, str]:
    flags = {}
    for arg in deploy_args(gpu):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value
    return flags


def _seconds(text: str) -> float:
    return float(text.rstrip("s"))


SUBS = {k: str(v) for k, v in CLOUDBUILD["substitutions"].items()}
assert SUBS["_GPU"] == DEFAULT_GPU == "nvidia-l4", "the L4 stays the default"
CONCURRENCY = GPU_PROFILES[DEFAULT_GPU].admitted_jobs
FLAGS = _deploy_flags()
RULES = Rules(
    min_retry_s=float(SUBS["_MIN_RETRY_DELAY"]),
    max_retry_s=float(SUBS["_MAX_RETRY_DELAY"]),
    max_delivery_attempts=int(SUBS["_MAX_DELIVERY_ATTEMPTS"]),
    ack_deadline_s=float(SUBS["_ACK_DEADLINE"]),
)


def _resolve(text: str) -> str:
    return re.sub(r"\$\{(_[A-Z0-9_]+)\}", lambda m: SUBS[m.group(1)], text)


def _deployed_env(gpu: str = DEFAULT_GPU) -> dict[str, str]:
    env = _resolve(_deploy_flags(gpu)["set-env-vars"])
    return dict(kv.split("=", 1) for kv in env.split(","))


REQUEST_SLOTS = GPU_PROFILES[DEFAULT_GPU].request_slots
# Cloud Run adds instances when the requests in flight exceed 60 % of --concurrency (its
# autoscaling documentation; not measured here).
AUTOSCALER_CONCURRENCY_TARGET = 0.6


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_the_instance_admits_the_jobs_and_cloud_run_sends_more_for_quick_answers(gpu):
    """Quick answers never wait behind GPU jobs: Cloud Run's request slots exceed the jobs the
    instance admits, so a duplicate (503), a refusal or an ignored Firestore event always finds
    a free slot at once; with --concurrency equal to the admitted jobs it would wait ~10 s for
    a 429, be retried, and count toward dead-lettering while long jobs hold every slot."""
    admitted, slots = GPU_PROFILES[gpu].admitted_jobs, GPU_PROFILES[gpu].request_slots
    assert _deploy_flags(gpu)["concurrency"] == str(slots)
    assert _deployed_env(gpu)["INPAINT_MAX_QUEUED_JOBS"] == str(admitted)
    assert admitted > 1  # one GPU, fed without waiting for Pub/Sub's retries
    assert slots - admitted >= 2, "slots no long job can hold"
    # A busy instance (every job slot held) still reads as busy to the autoscaler.
    assert admitted / slots > AUTOSCALER_CONCURRENCY_TARGET


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_gunicorn_has_threads_for_every_request_slot_and_the_probes(monkeypatch, gpu):
    admitted, slots = GPU_PROFILES[gpu].admitted_jobs, GPU_PROFILES[gpu].request_slots
    monkeypatch.delenv("THREADS", raising=False)
    monkeypatch.setenv("INPAINT_MAX_QUEUED_JOBS", str(admitted))
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["threads"] == admitted + 4 and conf["workers"] == 1
    # Cloud Run's startup and liveness probes come on top of the request slots.
    assert conf["threads"] >= slots + 2
    assert "THREADS" not in os.environ


def test_no_admitted_job_can_wait_past_the_ack_deadline():
    """The last of C admitted jobs answers after C x the longest job: within the request
    timeout, which is within the ack deadline (else the running job is delivered again)."""
    timeout = _seconds(_resolve(FLAGS["timeout"]))
    assert CONCURRENCY * L4_LONGEST_JOB_S <= timeout <= RULES.ack_deadline_s == 600
    # The service's own start-up check uses the same figure: 50 steps x 2 s + 10 s = 110 s.
    env = _deployed_env()
    settings = Settings(
        **{k[len("INPAINT_") :].lower(): v for k, v in env.items() if k.startswith("INPAINT_")}
    )
    longest = settings.max_steps * settings.seconds_per_step + settings.job_overhead_seconds
    assert longest == L4_LONGEST_JOB_S


@pytest.mark.parametrize("gpu", GPU_PROFILES)
def test_the_deployed_settings_agree_with_each_other_and_with_the_subscription(gpu):
    """The environment the deploy gives the service passes the service's start-up check
    (inpaint/config.py ``delivery_contradictions``) and names the subscription's values that
    the delivery step applies (so that step never has to change the env: no second revision)."""
    from inpaint.config import delivery_contradictions
    from tools.deploy import parse_args

    env = _deployed_env(gpu)
    settings = Settings(
        **{k[len("INPAINT_") :].lower(): v for k, v in env.items() if k.startswith("INPAINT_")}
    )
    assert delivery_contradictions(settings) == []
    assert settings.seconds_per_step is not None, "the job-time check runs in production"
    assert settings.max_attempts < settings.max_delivery_attempts == RULES.max_delivery_attempts
    assert settings.ack_deadline_seconds == RULES.ack_deadline_s
    assert settings.lease_seconds <= settings.ack_deadline_seconds

    (delivery,) = [s for s in CLOUDBUILD["steps"] if s.get("id") == "delivery"]
    args = [
        _resolve(a).replace("$PROJECT_ID", "p").replace("$PROJECT_NUMBER", "1")
        for a in delivery["args"][1:]
    ]
    target, _ = parse_args(args)
    assert (target.ack_deadline_s, target.max_delivery_attempts) == (
        RULES.ack_deadline_s,
        RULES.max_delivery_attempts,
    )
    assert (target.min_retry_delay_s, target.max_retry_delay_s) == (
        RULES.min_retry_s,
        RULES.max_retry_s,
    )
    assert {k: env[k] for k in target.service_env} == target.service_env
    assert target.region == SUBS["_REGION"] and target.service == SUBS["_SERVICE"]


# How long a push beyond the admitted jobs waits before it is refused: ~10 s for Cloud Run's
# 429 (every request slot held), 0 s for the instance's own 503 (a quick-answer slot was free).
@pytest.mark.parametrize("pending_s", [10.0, 0.0])
@pytest.mark.parametrize("window_min", [1, 10])  # Pub/Sub's push window: assumed, both ways
@pytest.mark.parametrize("job_s", L4_JOB_S)
def test_the_supported_burst_drains_at_the_gpus_pace_with_nothing_dead_lettered(
    job_s, window_min, pending_s
):
    rules = Rules(**{**RULES.__dict__, "window_min": window_min, "pending_s": pending_s})
    report = simulate(Scenario(SUPPORTED_BURST_PER_INSTANCE, CONCURRENCY, 1, job_s, rules))
    assert report.ratio <= 1.2, report
    assert report.dead_lettered == 0 and report.late == 0, report
    # Nothing waits long enough to be failed as "expired" while Pub/Sub still holds it.
    assert report.makespan_s < Settings().max_event_age_seconds


def test_one_job_at_a_time_would_leave_the_gpu_idle_under_a_pessimistic_push_window():
    """Why the concurrency is above 1: with a push window that does not shrink below 10, a burst
    at concurrency 1 drains at the pace of Pub/Sub's retries."""
    rules = Rules(**{**RULES.__dict__, "window_min": 10})
    one = simulate(Scenario(50, 1, 1, (30.0, 30.0), rules))
    ours = simulate(Scenario(50, CONCURRENCY, 1, (30.0, 30.0), rules))
    assert one.ratio > 1.5 and one.gpu_busy < 0.7
    assert ours.ratio <= 1.05 and ours.answers_429 > 0


def test_the_longer_retry_delay_would_slow_the_burst():
    """Why --max-retry-delay=60s: with 600 s a refused push can come back after the GPU ran dry."""
    slow = Rules(**{**RULES.__dict__, "window_min": 10, "max_retry_s": 600.0})
    report = simulate(Scenario(50, CONCURRENCY, 1, (20.0, 20.0), slow))
    assert report.ratio > 1.2
