"""Ensure, on every deploy, everything the service relies on around it (issue 28).

Run by cloudbuild.yaml's ``delivery`` step right after ``gcloud run deploy``:

    python3 tools/deploy.py --project=P --project-number=N --region=R --service=S \
        --ack-deadline=600 --min-retry-delay=10 --max-retry-delay=60 --max-delivery-attempts=100

It reads the current state (``describe``, ``get-iam-policy``) and writes only what differs, so
a second run writes nothing. In order:

1. the trigger's service account exists (created once per project, docs/runbook.md 1.4);
2. the topic and the dead-letter topic;
3. the dead-letter pull subscription (ack deadline 60 s, 7 days, never expires);
4. the Pub/Sub service agent may publish to the dead-letter topic;
5. the trigger's account may invoke the service;
6. the Eventarc trigger (topic -> service);
7. the trigger's own subscription, named by the trigger: ack deadline, retry policy, dead-letter
   policy (Eventarc creates it with its defaults and takes none of these);
8. the Pub/Sub service agent may pull from it (to forward dead letters);
   (6-8 also for the optional Firestore document trigger, with ``--firestore-trigger-location``);
9. the service's environment that must agree with 7: ``INPAINT_ACK_DEADLINE_SECONDS`` and
   ``INPAINT_MAX_DELIVERY_ATTEMPTS`` (the service checks its own limits against them at start).

Standard library only: it runs in the google-cloud-cli image of the deploy step. The decisions
(what to write, given what is there) are pure functions, tested table-driven in
tests/deploy/test_deploy_script.py; the order and idempotence are tested with a recording
stand-in for gcloud, and the Pub/Sub part with the real gcloud against Google's emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

TRIGGER_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# Pub/Sub's limits for a subscription (and the deploy's own floor for the retry delays).
ACK_DEADLINE_RANGE = (10, 600)
DELIVERY_ATTEMPTS_RANGE = (5, 100)
RETRY_DELAY_RANGE = (0, 600)


@dataclass(frozen=True)
class GpuProfile:
    """What one GPU type needs from the deploy: the instance (Cloud Run's minimum CPU and memory
    for it, its regions), the torch build its driver runs, the service settings that suit it.
    Cloud Run's GPU documentation as read 2026-12 (docs/runbook.md, "GPU profiles")."""

    gpu_type: str
    cpu: int
    memory_gib: int
    min_cpu: int
    min_memory_gib: int
    regions: tuple[str, ...]  # incl. invitation-only ones
    driver: str
    # The image's torch wheel index (Dockerfile TORCH_INDEX_URL): a CUDA build the driver runs.
    torch_index: str
    admitted_jobs: int  # INPAINT_MAX_QUEUED_JOBS
    request_slots: int  # Cloud Run --concurrency: admitted jobs + slots for quick answers
    seconds_per_step: float  # INPAINT_SECONDS_PER_STEP: estimate at 1 MP, for the start-up check
    env: tuple[tuple[str, str], ...]  # the model profile (docs/performance.md)


GPU_PROFILES: dict[str, GpuProfile] = {
    # The default. Driver 535 (CUDA 12.2): CUDA 12.x wheels run by minor-version compatibility,
    # CUDA 13 wheels do not. 24 GB: the Q4_0 GGUF layers (dequantized per step) with CLIP and T5
    # offloaded to CPU memory (ours-l4-gguf).
    "nvidia-l4": GpuProfile(
        gpu_type="nvidia-l4",
        cpu=8,
        memory_gib=32,
        min_cpu=4,
        min_memory_gib=16,
        regions=(
            "us-east4",
            "us-central1",
            "europe-west1",
            "europe-west4",
            "asia-southeast1",
            "asia-south1",
        ),
        driver="535 (CUDA 12.2)",
        torch_index="https://download.pytorch.org/whl/cu126",
        admitted_jobs=4,
        request_slots=6,
        seconds_per_step=2.0,
        env=(("INPAINT_OFFLOAD_TEXT_ENCODERS", "true"),),
    ),
    # NVIDIA RTX PRO 6000 Blackwell, 96 GB (sm_120; preview on some of Google's pages). Driver
    # 580 (CUDA 13.0): PyPI's default torch 2.13 wheel is the CUDA 13.0 build, which has
    # Blackwell kernels (the cu126 build has none for sm_120). The transformer dequantized to
    # bf16 once at load (~24 GB), T5 and CLIP on the GPU (~9.7 GB): no per-step dequantization,
    # no encoder visits. ~0.15-0.3 s per step at 1 MP estimated (docs/runbook.md); 0.5 s is
    # taken for the start-up bound.
    "nvidia-rtx-pro-6000": GpuProfile(
        gpu_type="nvidia-rtx-pro-6000",
        cpu=20,
        memory_gib=80,
        min_cpu=20,
        min_memory_gib=80,
        regions=("us-central1", "europe-west4", "asia-southeast1", "asia-south2"),
        driver="580 (CUDA 13.0)",
        torch_index="https://pypi.org/simple",
        admitted_jobs=8,
        request_slots=10,
        seconds_per_step=0.5,
        # The cost field: 20 vCPU and 80 GiB at the us-central1 tier-1 list prices; the GPU's
        # own per-second price was not found published for Cloud Run: add it once it is.
        env=(("INPAINT_DEQUANTIZE", "true"), ("INPAINT_PRICE_PER_SECOND", "0.00052")),
    ),
}
DEFAULT_GPU = "nvidia-l4"


def run_deploy_argv(
    profile: GpuProfile,
    *,
    service: str,
    image: str,
    region: str,
    project: str,
    max_instances: str,
    runtime_service_account: str,
    bucket: str,
    ack_deadline: str,
    max_delivery_attempts: str,
) -> list[str]:
    """``gcloud run deploy`` for ``profile`` (the arguments after ``gcloud``). Pure: the values
    are put in as given, so the tests can pass Cloud Build's ``${_X}`` placeholders."""
    env = [
        ("INPAINT_BUCKET", bucket),
        ("GOOGLE_CLOUD_PROJECT", project),
        ("INPAINT_MAX_QUEUED_JOBS", str(profile.admitted_jobs)),
        *profile.env,
        ("INPAINT_ACK_DEADLINE_SECONDS", ack_deadline),
        ("INPAINT_MAX_DELIVERY_ATTEMPTS", max_delivery_attempts),
        ("INPAINT_SECONDS_PER_STEP", f"{profile.seconds_per_step:g}"),
    ]
    return [
        "run",
        "deploy",
        service,
        f"--image={image}",
        f"--region={region}",
        "--execution-environment=gen2",
        "--gpu=1",
        f"--gpu-type={profile.gpu_type}",
        "--no-gpu-zonal-redundancy",
        f"--cpu={profile.cpu}",
        f"--memory={profile.memory_gib}Gi",
        "--no-cpu-throttling",
        f"--concurrency={profile.request_slots}",
        f"--timeout={ack_deadline}",
        "--min-instances=0",
        f"--max-instances={max_instances}",
        "--port=8080",
        "--no-allow-unauthenticated",
        f"--service-account={runtime_service_account}",
        "--startup-probe=httpGet.path=/ready,initialDelaySeconds=0,periodSeconds=10,"
        "timeoutSeconds=5,failureThreshold=60",
        "--liveness-probe=httpGet.path=/health,periodSeconds=30,timeoutSeconds=5,"
        "failureThreshold=3",
        "--set-env-vars=" + ",".join(f"{k}={v}" for k, v in env),
        "--quiet",
    ]


def profile_for(gpu: str, region: str) -> GpuProfile:
    """The profile of ``gpu``; refuses an unknown GPU or a region that does not offer it."""
    if gpu not in GPU_PROFILES:
        raise DeployError(f"unknown GPU {gpu!r}: choose one of {sorted(GPU_PROFILES)}")
    profile = GPU_PROFILES[gpu]
    if region not in profile.regions:
        raise DeployError(
            f"{gpu} is not offered by Cloud Run in {region}; its regions: "
            f"{', '.join(profile.regions)} (set _REGION)"
        )
    return profile


class DeployError(RuntimeError):
    """Something the deploy cannot fix by itself (a missing account, a trigger on another
    topic): the message says what to do."""


@dataclass(frozen=True)
class Target:
    """What the deploy ensures. Defaults are the production names (docs/runbook.md)."""

    project: str
    project_number: str
    region: str
    service: str
    topic: str = "session-processing"
    dead_letter_topic: str = "session-processing-dead-letter"
    dead_letter_subscription: str = "session-processing-dead-letter-sub"
    trigger: str = "session-processing-to-inpaint"
    # The optional Firestore document trigger (off: None): its location is the (default)
    # database's (e.g. nam5). Its account needs roles/eventarc.eventReceiver on the project,
    # granted once (docs/runbook.md 1.4): the deploy does not hold project-IAM rights.
    firestore_trigger_location: str | None = None
    firestore_trigger: str = "session-written-to-inpaint"
    trigger_account_name: str = "inpaint-eventarc"
    ack_deadline_s: int = 600
    min_retry_delay_s: int = 10
    max_retry_delay_s: int = 60
    max_delivery_attempts: int = 100
    dead_letter_ack_deadline_s: int = 60
    dead_letter_retention_s: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        problems = []
        low, high = ACK_DEADLINE_RANGE
        if not low <= self.ack_deadline_s <= high:
            problems.append(f"ack deadline {self.ack_deadline_s} s is outside {low}..{high} s")
        low, high = DELIVERY_ATTEMPTS_RANGE
        if not low <= self.max_delivery_attempts <= high:
            problems.append(
                f"max delivery attempts {self.max_delivery_attempts} is outside {low}..{high}"
            )
        low, high = RETRY_DELAY_RANGE
        if not low <= self.min_retry_delay_s <= self.max_retry_delay_s <= high:
            problems.append(
                f"retry delays {self.min_retry_delay_s}..{self.max_retry_delay_s} s: need "
                f"{low} <= min <= max <= {high}"
            )
        if problems:
            raise DeployError("; ".join(problems))

    @property
    def pubsub_agent(self) -> str:
        return f"serviceAccount:service-{self.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"

    @property
    def trigger_account(self) -> str:
        return f"{self.trigger_account_name}@{self.project}.iam.gserviceaccount.com"

    def topic_path(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    @property
    def service_env(self) -> dict[str, str]:
        """The service's settings that must agree with the trigger's subscription."""
        return {
            "INPAINT_ACK_DEADLINE_SECONDS": str(self.ack_deadline_s),
            "INPAINT_MAX_DELIVERY_ATTEMPTS": str(self.max_delivery_attempts),
        }


# --- pure decisions ---------------------------------------------------------------------------


def seconds(duration: str | int | float | None) -> float | None:
    """A protobuf JSON duration (``"10s"``, ``"10.500s"``) in seconds; None when absent."""
    if duration is None or duration == "":
        return None
    if isinstance(duration, int | float):
        return float(duration)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    if not match:
        raise DeployError(f"not a duration: {duration!r}")
    return float(match.group(1))


def needs_binding(policy: dict | None, role: str, member: str) -> bool:
    """True when ``member`` does not have ``role`` (unconditionally) in an IAM policy."""
    for binding in (policy or {}).get("bindings", []):
        unconditional = binding.get("role") == role and "condition" not in binding
        if unconditional and member in binding.get("members", []):
            return False
    return True


def subscription_update_flags(observed: dict, target: Target) -> list[str]:
    """The ``gcloud pubsub subscriptions update`` flags that bring the trigger's subscription
    to the target (empty: nothing to change)."""
    flags = []
    if observed.get("ackDeadlineSeconds") != target.ack_deadline_s:
        flags.append(f"--ack-deadline={target.ack_deadline_s}")
    retry = observed.get("retryPolicy") or {}
    if (seconds(retry.get("minimumBackoff")), seconds(retry.get("maximumBackoff"))) != (
        target.min_retry_delay_s,
        target.max_retry_delay_s,
    ):
        flags += [
            f"--min-retry-delay={target.min_retry_delay_s}s",
            f"--max-retry-delay={target.max_retry_delay_s}s",
        ]
    dead = observed.get("deadLetterPolicy") or {}
    if (dead.get("deadLetterTopic"), dead.get("maxDeliveryAttempts")) != (
        target.topic_path(target.dead_letter_topic),
        target.max_delivery_attempts,
    ):
        flags += [
            f"--dead-letter-topic={target.topic_path(target.dead_letter_topic)}",
            f"--max-delivery-attempts={target.max_delivery_attempts}",
        ]
    return flags


def dead_letter_subscription_flags(observed: dict | None, target: Target) -> list[str]:
    """Create (observed None) or update flags for the dead-letter pull subscription."""
    wanted = [
        f"--ack-deadline={target.dead_letter_ack_deadline_s}",
        f"--message-retention-duration={target.dead_letter_retention_s}s",
        "--expiration-period=never",
    ]
    if observed is None:
        return [f"--topic={target.dead_letter_topic}", *wanted]
    if observed.get("topic") != target.topic_path(target.dead_letter_topic):
        raise DeployError(
            f"subscription {target.dead_letter_subscription} reads {observed.get('topic')}, "
            f"not {target.topic_path(target.dead_letter_topic)}: delete it (after pulling any "
            "dead letters it holds) and deploy again"
        )
    flags = []
    if observed.get("ackDeadlineSeconds") != target.dead_letter_ack_deadline_s:
        flags.append(wanted[0])
    if seconds(observed.get("messageRetentionDuration")) != target.dead_letter_retention_s:
        flags.append(wanted[1])
    # "never": an expiration policy without a ttl.
    expiration = observed.get("expirationPolicy")
    if expiration is None or expiration.get("ttl"):
        flags.append(wanted[2])
    return flags


def destination_flags(target: Target) -> list[str]:
    """A trigger's destination: the service's root path."""
    return [
        f"--destination-run-service={target.service}",
        f"--destination-run-region={target.region}",
        "--destination-run-path=/",
    ]


def destination_matches(observed: dict, target: Target) -> bool:
    """Whether a described trigger already sends to the service's root path."""
    run = (observed.get("destination") or {}).get("cloudRun") or {}
    return (run.get("service"), run.get("region"), run.get("path")) == (
        target.service,
        target.region,
        "/",
    )


def trigger_flags(observed: dict | None, target: Target) -> list[str]:
    """Create (observed None) or update flags for the Eventarc trigger. Its transport topic
    cannot be changed in place."""
    destination = destination_flags(target)
    filters = f"--event-filters=type={TRIGGER_EVENT_TYPE}"
    account = f"--service-account={target.trigger_account}"
    if observed is None:
        return [
            *destination,
            filters,
            f"--transport-topic={target.topic_path(target.topic)}",
            account,
        ]
    topic = ((observed.get("transport") or {}).get("pubsub") or {}).get("topic")
    if topic != target.topic_path(target.topic):
        raise DeployError(
            f"trigger {target.trigger} listens to {topic}, not "
            f"{target.topic_path(target.topic)}; a trigger's topic cannot change: delete it "
            f"(gcloud eventarc triggers delete {target.trigger} --location={target.region}) "
            "and deploy again"
        )
    flags = []
    if not destination_matches(observed, target):
        flags += destination
    wanted_filters = [{"attribute": "type", "value": TRIGGER_EVENT_TYPE}]
    if sorted(observed.get("eventFilters") or [], key=str) != wanted_filters:
        flags.append(filters)
    if observed.get("serviceAccount") != target.trigger_account:
        flags.append(account)
    return flags


FIRESTORE_EVENT_TYPE = "google.cloud.firestore.document.v1.written"
SESSION_DOCUMENTS = "users/{userId}/sessions/{sessionId}"


def firestore_trigger_flags(observed: dict | None, target: Target) -> list[str]:
    """Create (observed None) or update flags for the optional Firestore trigger: every write
    of a session document, as protobuf events, to the service."""
    destination = destination_flags(target)
    filters = f"--event-filters=type={FIRESTORE_EVENT_TYPE},database=(default)"
    pattern = f"--event-filters-path-pattern=document={SESSION_DOCUMENTS}"
    content = "--event-data-content-type=application/protobuf"
    account = f"--service-account={target.trigger_account}"
    if observed is None:
        return [*destination, filters, pattern, content, account]
    flags = []
    if not destination_matches(observed, target):
        flags += destination
    wanted = {
        ("type", FIRESTORE_EVENT_TYPE, None),
        ("database", "(default)", None),
        ("document", SESSION_DOCUMENTS, "match-path-pattern"),
    }
    seen = {
        (f.get("attribute"), f.get("value"), f.get("operator"))
        for f in observed.get("eventFilters") or []
    }
    if seen != wanted:
        flags += [filters, pattern]
    if observed.get("eventDataContentType") != "application/protobuf":
        flags.append(content)
    if observed.get("serviceAccount") != target.trigger_account:
        flags.append(account)
    return flags


def env_updates(service: dict, wanted: dict[str, str]) -> dict[str, str]:
    """The variables of ``wanted`` that the deployed service (``run services describe``) lacks
    or holds with another value."""
    containers = service.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    env = {e.get("name"): e.get("value") for e in (containers or [{}])[0].get("env", [])}
    return {k: v for k, v in wanted.items() if env.get(k) != v}


# --- gcloud -----------------------------------------------------------------------------------

# How gcloud says that a resource does not exist (Pub/Sub, Eventarc and IAM answer NOT_FOUND;
# `run services describe` says "Cannot find service"). A refusal is never taken for absence
# ("Permission ... denied on resource (or it may not exist)").
_NOT_FOUND = re.compile(r"NOT_FOUND|Cannot find service|was not found")


def is_missing(stderr: str) -> bool:
    """True when a failed ``describe``/``get-iam-policy`` said the resource does not exist."""
    if re.search(r"PERMISSION_DENIED|Permission .* denied|UNAUTHENTICATED", stderr):
        return False
    return bool(_NOT_FOUND.search(stderr))


@dataclass
class Gcloud:
    """Runs gcloud; ``read`` returns None for a resource that does not exist."""

    executable: list[str]
    project: str
    log: Callable[[str], None] = lambda line: print(line, flush=True)
    writes: int = 0

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        argv = [*self.executable, *args, f"--project={self.project}", "--quiet"]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def read(self, args: list[str]) -> dict | None:
        proc = self._run([*args, "--format=json"])
        if proc.returncode != 0:
            if is_missing(proc.stderr):
                return None
            raise DeployError(f"gcloud {shlex.join(args)} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout or "null") or {}

    def write(self, args: list[str]) -> None:
        self.log(f"+ gcloud {shlex.join(args)}")
        self.writes += 1
        proc = self._run(args)
        if proc.returncode != 0:
            raise DeployError(f"gcloud {shlex.join(args)} failed: {proc.stderr.strip()}")


def ensure(target: Target, gcloud: Gcloud) -> int:
    """Bring everything to the target; returns the number of writes (0 when nothing changed)."""
    t, region = target, f"--region={target.region}"
    if gcloud.read(["iam", "service-accounts", "describe", t.trigger_account]) is None:
        raise DeployError(
            f"service account {t.trigger_account} does not exist: create it once "
            "(docs/runbook.md, 1.4) and deploy again"
        )
    for topic in (t.topic, t.dead_letter_topic):
        if gcloud.read(["pubsub", "topics", "describe", topic]) is None:
            gcloud.write(["pubsub", "topics", "create", topic])

    sub = t.dead_letter_subscription
    observed = gcloud.read(["pubsub", "subscriptions", "describe", sub])
    flags = dead_letter_subscription_flags(observed, t)
    if flags:
        verb = "create" if observed is None else "update"
        gcloud.write(["pubsub", "subscriptions", verb, sub, *flags])

    def ensure_binding(resource: list[str], extra: list[str], role: str, member: str) -> None:
        policy = gcloud.read([*resource[:-1], "get-iam-policy", resource[-1], *extra])
        if needs_binding(policy, role, member):
            gcloud.write(
                [
                    *resource[:-1],
                    "add-iam-policy-binding",
                    resource[-1],
                    *extra,
                    f"--member={member}",
                    f"--role={role}",
                ]
            )

    ensure_binding(
        ["pubsub", "topics", t.dead_letter_topic], [], "roles/pubsub.publisher", t.pubsub_agent
    )
    ensure_binding(
        ["run", "services", t.service],
        [region],
        "roles/run.invoker",
        f"serviceAccount:{t.trigger_account}",
    )

    triggers = [(t.trigger, t.region, trigger_flags)]
    if t.firestore_trigger_location:
        triggers.append(
            (t.firestore_trigger, t.firestore_trigger_location, firestore_trigger_flags)
        )
    for name, where, decide in triggers:
        location = f"--location={where}"
        trigger = gcloud.read(["eventarc", "triggers", "describe", name, location])
        flags = decide(trigger, t)
        if flags:
            verb = "create" if trigger is None else "update"
            gcloud.write(["eventarc", "triggers", verb, name, location, *flags])
            trigger = gcloud.read(["eventarc", "triggers", "describe", name, location])
        subscription = (((trigger or {}).get("transport") or {}).get("pubsub") or {}).get(
            "subscription"
        )
        if not subscription:
            raise DeployError(f"trigger {name} names no subscription yet: deploy again")

        observed = gcloud.read(["pubsub", "subscriptions", "describe", subscription])
        if observed is None:
            raise DeployError(f"the trigger's subscription {subscription} does not exist")
        flags = subscription_update_flags(observed, t)
        if flags:
            gcloud.write(["pubsub", "subscriptions", "update", subscription, *flags])
        ensure_binding(
            ["pubsub", "subscriptions", subscription],
            [],
            "roles/pubsub.subscriber",
            t.pubsub_agent,
        )

    service = gcloud.read(["run", "services", "describe", t.service, region])
    if service is None:
        raise DeployError(f"Cloud Run service {t.service} does not exist: deploy it first")
    updates = env_updates(service, t.service_env)
    if updates:
        pairs = ",".join(f"{k}={v}" for k, v in sorted(updates.items()))
        gcloud.write(["run", "services", "update", t.service, region, f"--update-env-vars={pairs}"])
    return gcloud.writes


def parse_args(argv: list[str]) -> tuple[Target, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--project-number", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--ack-deadline", type=int, default=600, help="seconds")
    parser.add_argument("--min-retry-delay", type=int, default=10, help="seconds")
    parser.add_argument("--max-retry-delay", type=int, default=60, help="seconds")
    parser.add_argument("--max-delivery-attempts", type=int, default=100)
    parser.add_argument(
        "--firestore-trigger-location",
        default="",
        help="the (default) database's location: also ensure the optional Firestore trigger",
    )
    parser.add_argument(
        "--gcloud",
        default=os.environ.get("DEPLOY_GCLOUD", "gcloud"),
        help="the gcloud command (a stand-in in tests)",
    )
    args = parser.parse_args(argv)
    target = Target(
        project=args.project,
        project_number=args.project_number,
        region=args.region,
        service=args.service,
        ack_deadline_s=args.ack_deadline,
        min_retry_delay_s=args.min_retry_delay,
        max_retry_delay_s=args.max_retry_delay,
        max_delivery_attempts=args.max_delivery_attempts,
        firestore_trigger_location=args.firestore_trigger_location or None,
    )
    return target, shlex.split(args.gcloud)


def parse_service_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``service --gpu=G ...``: the ``gcloud run deploy`` arguments of G's profile, and gcloud."""
    parser = argparse.ArgumentParser(prog="deploy.py service")
    parser.add_argument(
        "--gpu", default=DEFAULT_GPU, help="the GPU profile: " + ", ".join(GPU_PROFILES)
    )
    for name in (
        "project",
        "region",
        "service",
        "image",
        "max-instances",
        "runtime-service-account",
        "ack-deadline",
        "max-delivery-attempts",
    ):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--bucket", default="")
    parser.add_argument("--gcloud", default=os.environ.get("DEPLOY_GCLOUD", "gcloud"))
    args = parser.parse_args(argv)
    profile = profile_for(args.gpu, args.region)
    command = run_deploy_argv(
        profile,
        service=args.service,
        image=args.image,
        region=args.region,
        project=args.project,
        max_instances=args.max_instances,
        runtime_service_account=args.runtime_service_account,
        bucket=args.bucket,
        ack_deadline=args.ack_deadline,
        max_delivery_attempts=args.max_delivery_attempts,
    )
    return command, shlex.split(args.gcloud)


def deploy_service(argv: list[str]) -> int:
    command, executable = parse_service_args(argv)
    print(f"+ gcloud {shlex.join(command)}", flush=True)
    return subprocess.run([*executable, *command], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:
        try:
            return deploy_service(argv[1:])
        except DeployError as exc:
            print(f"deploy: {exc}", file=sys.stderr)
            return 1
    try:
        target, executable = parse_args(argv)
        writes = ensure(target, Gcloud(executable, target.project))
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print(f"deploy: delivery settings in place ({writes} change(s))", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
