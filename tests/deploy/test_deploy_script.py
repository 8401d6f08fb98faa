"""tools/deploy.py: the deploy ensures every delivery setting, in order, and a second run writes
nothing.

- The decisions (what to write given what is there) are pure functions: table-driven here.
- Order and idempotence: the script runs against ``tests/deploy/fake_gcloud.py``, a recording
  stand-in for gcloud (no emulator exists for Eventarc, IAM or Cloud Run).
- Every command the script sends is checked against ``gcloud ... --help`` of the installed gcloud.
- The Pub/Sub part (topics, the dead-letter subscription, the trigger subscription's ack
  deadline, retry policy and dead-letter policy) runs with the real gcloud against Google's
  Pub/Sub emulator. The emulator does not implement IAM (getIamPolicy answers 501
  UNIMPLEMENTED), so the two bindings of the Pub/Sub service agent stay with the stand-in.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_cloudbuild import GCLOUD, check_gcloud_invocation, needs_gcloud
from tools.deploy import (
    TRIGGER_EVENT_TYPE,
    DeployError,
    Target,
    dead_letter_subscription_flags,
    env_updates,
    needs_binding,
    seconds,
    subscription_update_flags,
    trigger_flags,
)

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "deploy" / "fake_gcloud.py"
T = Target(project="my-project", project_number="123456789012", region="us-east4", service="svc")
AGENT = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
TRIGGER_SA = "inpaint-eventarc@my-project.iam.gserviceaccount.com"
DLT = "projects/my-project/topics/session-processing-dead-letter"
GOOD_SUB = {
    "ackDeadlineSeconds": 600,
    "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "60s"},
    "deadLetterPolicy": {"deadLetterTopic": DLT, "maxDeliveryAttempts": 100},
}
WRITES = ("create", "update", "add-iam-policy-binding", "delete", "set-iam-policy", "deploy")


# --- pure decisions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (GOOD_SUB, []),
        ({**GOOD_SUB, "retryPolicy": {"minimumBackoff": "10.000s", "maximumBackoff": "60s"}}, []),
        (
            {"ackDeadlineSeconds": 10},  # what Eventarc creates
            [
                "--ack-deadline=600",
                "--min-retry-delay=10s",
                "--max-retry-delay=60s",
                f"--dead-letter-topic={DLT}",
                "--max-delivery-attempts=100",
            ],
        ),
        ({**GOOD_SUB, "ackDeadlineSeconds": 10}, ["--ack-deadline=600"]),
        (
            {**GOOD_SUB, "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "600s"}},
            ["--min-retry-delay=10s", "--max-retry-delay=60s"],
        ),
        (
            {**GOOD_SUB, "deadLetterPolicy": {"deadLetterTopic": DLT, "maxDeliveryAttempts": 5}},
            [f"--dead-letter-topic={DLT}", "--max-delivery-attempts=100"],
        ),
        (
            {k: v for k, v in GOOD_SUB.items() if k != "deadLetterPolicy"},
            [f"--dead-letter-topic={DLT}", "--max-delivery-attempts=100"],
        ),
    ],
)
def test_trigger_subscription_flags(observed, expected):
    assert subscription_update_flags(observed, T) == expected


GOOD_DLS = {
    "topic": DLT,
    "ackDeadlineSeconds": 60,
    "messageRetentionDuration": "604800s",
    "expirationPolicy": {},
}


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (
            None,
            [
                "--topic=session-processing-dead-letter",
                "--ack-deadline=60",
                "--message-retention-duration=604800s",
                "--expiration-period=never",
            ],
        ),
        (GOOD_DLS, []),
        ({**GOOD_DLS, "ackDeadlineSeconds": 10}, ["--ack-deadline=60"]),
        (
            {**GOOD_DLS, "messageRetentionDuration": "86400s"},
            ["--message-retention-duration=604800s"],
        ),
        ({**GOOD_DLS, "expirationPolicy": {"ttl": "2678400s"}}, ["--expiration-period=never"]),
        (
            {k: v for k, v in GOOD_DLS.items() if k != "expirationPolicy"},
            ["--expiration-period=never"],
        ),
    ],
)
def test_dead_letter_subscription_flags(observed, expected):
    assert dead_letter_subscription_flags(observed, T) == expected


def test_a_dead_letter_subscription_on_another_topic_is_refused():
    with pytest.raises(DeployError, match="delete it"):
        dead_letter_subscription_flags({**GOOD_DLS, "topic": "projects/p/topics/x"}, T)


GOOD_TRIGGER = {
    "destination": {"cloudRun": {"service": "svc", "region": "us-east4", "path": "/"}},
    "eventFilters": [{"attribute": "type", "value": TRIGGER_EVENT_TYPE}],
    "serviceAccount": TRIGGER_SA,
    "transport": {"pubsub": {"topic": "projects/my-project/topics/session-processing"}},
}
DEST = [
    "--destination-run-service=svc",
    "--destination-run-region=us-east4",
    "--destination-run-path=/",
]


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (
            None,
            [
                *DEST,
                "--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished",
                "--transport-topic=projects/my-project/topics/session-processing",
                f"--service-account={TRIGGER_SA}",
            ],
        ),
        (GOOD_TRIGGER, []),
        ({**GOOD_TRIGGER, "serviceAccount": "x@y"}, [f"--service-account={TRIGGER_SA}"]),
        ({**GOOD_TRIGGER, "destination": {"cloudRun": {"service": "old"}}}, DEST),
        (
            {**GOOD_TRIGGER, "eventFilters": []},
            ["--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished"],
        ),
    ],
)
def test_trigger_flags(observed, expected):
    assert trigger_flags(observed, T) == expected


def test_a_trigger_on_another_topic_is_refused():
    observed = {**GOOD_TRIGGER, "transport": {"pubsub": {"topic": "projects/p/topics/other"}}}
    with pytest.raises(DeployError, match="cannot change"):
        trigger_flags(observed, T)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, True),
        ({}, True),
        ({"bindings": [{"role": "roles/pubsub.publisher", "members": [AGENT]}]}, False),
        ({"bindings": [{"role": "roles/pubsub.subscriber", "members": [AGENT]}]}, True),
        ({"bindings": [{"role": "roles/pubsub.publisher", "members": ["user:a@b"]}]}, True),
        (  # a conditional binding does not grant it always
            {"bindings": [{"role": "roles/pubsub.publisher", "members": [AGENT], "condition": {}}]},
            True,
        ),
    ],
)
def test_needs_binding(policy, expected):
    assert needs_binding(policy, "roles/pubsub.publisher", AGENT) is expected


def _service(env: dict[str, str]) -> dict:
    variables = [{"name": k, "value": v} for k, v in env.items()]
    return {"spec": {"template": {"spec": {"containers": [{"env": variables}]}}}}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, T.service_env),
        (T.service_env, {}),
        (
            {**T.service_env, "INPAINT_MAX_DELIVERY_ATTEMPTS": "5", "OTHER": "x"},
            {"INPAINT_MAX_DELIVERY_ATTEMPTS": "100"},
        ),
    ],
)
def test_env_updates(env, expected):
    assert env_updates(_service(env), T.service_env) == expected


@pytest.mark.parametrize(
    ("stderr", "missing"),
    [
        (
            "ERROR: (gcloud.pubsub.topics.describe) NOT_FOUND: Resource not found (resource=t).",
            True,
        ),
        ("ERROR: (gcloud.eventarc.triggers.describe) NOT_FOUND: Resource 'x' was not found", True),
        ("ERROR: (gcloud.iam.service-accounts.describe) NOT_FOUND: Unknown service account", True),
        ("ERROR: (gcloud.run.services.describe) Cannot find service [svc]", True),
        (
            "ERROR: (gcloud.iam.service-accounts.describe) PERMISSION_DENIED: Permission "
            "'iam.serviceAccounts.get' denied on resource (or it may not exist).",
            False,
        ),
        ("ERROR: (gcloud.eventarc.triggers.describe) Permission 'x' denied on 'y'", False),
        ("ERROR: (gcloud.pubsub.topics.describe) UNAUTHENTICATED: no credentials", False),
        ("ERROR: (gcloud.run.services.describe) 503 Service Unavailable", False),
    ],
)
def test_only_absence_is_taken_for_a_missing_resource(stderr, missing):
    from tools.deploy import is_missing

    assert is_missing(stderr) is missing


@pytest.mark.parametrize(
    ("text", "expected"), [("10s", 10.0), ("10.500s", 10.5), (None, None), ("", None), (60, 60.0)]
)
def test_seconds(text, expected):
    assert seconds(text) == expected


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"ack_deadline_s": 601}, "ack deadline"),
        ({"ack_deadline_s": 9}, "ack deadline"),
        ({"max_delivery_attempts": 101}, "delivery attempts"),
        ({"max_delivery_attempts": 4}, "delivery attempts"),
        ({"min_retry_delay_s": 61}, "retry delays"),
        ({"max_retry_delay_s": 601}, "retry delays"),
    ],
)
def test_targets_outside_pubsubs_limits_are_refused(changes, match):
    with pytest.raises(DeployError, match=match):
        Target(**{**T.__dict__, **changes})


# --- the whole script against the recording stand-in ------------------------------------------


class Stand:
    """The state and call log of one stand-in gcloud, and a way to run the script on it."""

    def __init__(self, tmp: Path, real: str | None = None, extra_env: dict | None = None):
        self.log, self.state_path = tmp / "calls.jsonl", tmp / "state.json"
        self.real, self.extra_env = real, extra_env or {}
        self.state_path.write_text(
            json.dumps(
                {
                    "accounts": [TRIGGER_SA],
                    "services": {"svc": {"spec": {"template": {"spec": {"containers": [{}]}}}}},
                }
            )
        )

    @property
    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def calls(self) -> list[list[str]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        before = len(self.calls())
        env = (
            os.environ
            | self.extra_env
            | {
                "FAKE_GCLOUD_LOG": str(self.log),
                "FAKE_GCLOUD_STATE": str(self.state_path),
            }
        )
        if self.real:
            env["FAKE_GCLOUD_REAL"] = self.real
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "tools" / "deploy.py"),
                "--project=my-project",
                "--project-number=123456789012",
                "--region=us-east4",
                "--service=svc",
                f"--gcloud={shlex.join([sys.executable, str(FAKE)])}",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        return proc, self.calls()[before:]


def writes(calls: list[list[str]]) -> list[list[str]]:
    """The calls that change something, without the flags every call carries."""
    return [
        [a for a in c if not a.startswith(("--project=", "--quiet"))]
        for c in calls
        if len(c) > 2 and c[2] in WRITES
    ]


SUB = "projects/my-project/subscriptions/eventarc-us-east4-session-processing-to-inpaint-sub-001"
FIRST_RUN = [
    ["pubsub", "topics", "create", "session-processing"],
    ["pubsub", "topics", "create", "session-processing-dead-letter"],
    [
        "pubsub", "subscriptions", "create", "session-processing-dead-letter-sub",
        "--topic=session-processing-dead-letter", "--ack-deadline=60",
        "--message-retention-duration=604800s", "--expiration-period=never",
    ],
    [
        "pubsub", "topics", "add-iam-policy-binding", "session-processing-dead-letter",
        f"--member={AGENT}", "--role=roles/pubsub.publisher",
    ],
    [
        "run", "services", "add-iam-policy-binding", "svc", "--region=us-east4",
        f"--member=serviceAccount:{TRIGGER_SA}", "--role=roles/run.invoker",
    ],
    [
        "eventarc", "triggers", "create", "session-processing-to-inpaint",
        "--location=us-east4", *DEST,
        "--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished",
        "--transport-topic=projects/my-project/topics/session-processing",
        f"--service-account={TRIGGER_SA}",
    ],
    [
        "pubsub", "subscriptions", "update", SUB, "--ack-deadline=600",
        "--min-retry-delay=10s", "--max-retry-delay=60s",
        f"--dead-letter-topic={DLT}", "--max-delivery-attempts=100",
    ],
    [
        "pubsub", "subscriptions", "add-iam-policy-binding", SUB,
        f"--member={AGENT}", "--role=roles/pubsub.subscriber",
    ],
    [
        "run", "services", "update", "svc", "--region=us-east4",
        "--update-env-vars=INPAINT_ACK_DEADLINE_SECONDS=600,INPAINT_MAX_DELIVERY_ATTEMPTS=100",
    ],
]  # fmt: skip


def test_first_run_ensures_everything_in_order_and_a_second_run_writes_nothing(tmp_path):
    stand = Stand(tmp_path)
    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert writes(calls) == FIRST_RUN
    assert "(9 change(s))" in proc.stdout
    after_first = stand.state
    sub = after_first["subscriptions"][SUB.rsplit("/", 1)[1]]
    assert {k: sub[k] for k in GOOD_SUB} == GOOD_SUB

    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert writes(calls) == [] and calls, "the second run only reads"
    assert "(0 change(s))" in proc.stdout
    assert stand.state == after_first


def test_a_recreated_trigger_gets_its_subscription_settings_back(tmp_path):
    """The failure this issue is about: a re-created trigger's new subscription has Eventarc's
    defaults. The next deploy sets them again, and only them."""
    stand = Stand(tmp_path)
    assert stand.run()[0].returncode == 0
    state = stand.state
    del state["triggers"]["session-processing-to-inpaint"]
    state["subscriptions"] = {
        k: v for k, v in state["subscriptions"].items() if not k.startswith("eventarc-")
    }
    stand.state_path.write_text(json.dumps(state))
    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert [c[:3] for c in writes(calls)] == [
        ["eventarc", "triggers", "create"],
        ["pubsub", "subscriptions", "update"],
    ], "the subscriber binding is still in the (kept) policy of the same name"


def test_drift_is_repaired_field_by_field(tmp_path):
    stand = Stand(tmp_path)
    assert stand.run()[0].returncode == 0
    state = stand.state
    sub = SUB.rsplit("/", 1)[1]
    state["subscriptions"][sub]["retryPolicy"]["maximumBackoff"] = "600s"
    state["services"]["svc"]["spec"]["template"]["spec"]["containers"][0]["env"] = []
    stand.state_path.write_text(json.dumps(state))
    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert writes(calls) == [
        [
            "pubsub",
            "subscriptions",
            "update",
            SUB,
            "--min-retry-delay=10s",
            "--max-retry-delay=60s",
        ],
        FIRST_RUN[-1],
    ]


def test_a_missing_trigger_account_stops_the_deploy_before_any_write(tmp_path):
    stand = Stand(tmp_path)
    stand.state_path.write_text(json.dumps({"accounts": []}))
    proc, calls = stand.run()
    assert proc.returncode == 1
    assert "inpaint-eventarc@my-project.iam.gserviceaccount.com does not exist" in proc.stderr
    assert "runbook" in proc.stderr and writes(calls) == []


FS_SUB = "projects/my-project/subscriptions/eventarc-nam5-session-written-to-inpaint-sub-001"
FS_CREATE = [
    "eventarc", "triggers", "create", "session-written-to-inpaint", "--location=nam5", *DEST,
    "--event-filters=type=google.cloud.firestore.document.v1.written,database=(default)",
    "--event-filters-path-pattern=document=users/{userId}/sessions/{sessionId}",
    "--event-data-content-type=application/protobuf",
    f"--service-account={TRIGGER_SA}",
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (None, FS_CREATE[5:]),
        (
            {
                "destination": GOOD_TRIGGER["destination"],
                "eventFilters": [
                    {"attribute": "database", "value": "(default)"},
                    {"attribute": "type", "value": "google.cloud.firestore.document.v1.written"},
                    {
                        "attribute": "document",
                        "value": "users/{userId}/sessions/{sessionId}",
                        "operator": "match-path-pattern",
                    },
                ],
                "eventDataContentType": "application/protobuf",
                "serviceAccount": TRIGGER_SA,
            },
            [],
        ),
        (
            {
                "destination": GOOD_TRIGGER["destination"],
                "eventFilters": [
                    {"attribute": "type", "value": "google.cloud.firestore.document.v1.written"}
                ],
                "eventDataContentType": "application/json",
                "serviceAccount": TRIGGER_SA,
            },
            [FS_CREATE[8], FS_CREATE[9], FS_CREATE[10]],
        ),
    ],
)
def test_firestore_trigger_flags(observed, expected):
    from tools.deploy import firestore_trigger_flags

    assert firestore_trigger_flags(observed, T) == expected


def test_the_optional_firestore_trigger_gets_the_same_subscription_settings(tmp_path):
    """With ``--firestore-trigger-location`` the deploy also ensures the Firestore document
    trigger and gives its subscription the same ack deadline, retries and dead letters."""
    stand = Stand(tmp_path)
    proc, calls = stand.run("--firestore-trigger-location=nam5")
    assert proc.returncode == 0, proc.stderr
    update, binding = FIRST_RUN[6][4:], FIRST_RUN[7][4:]
    assert writes(calls) == [
        *FIRST_RUN[:8],
        FS_CREATE,
        ["pubsub", "subscriptions", "update", FS_SUB, *update],
        ["pubsub", "subscriptions", "add-iam-policy-binding", FS_SUB, *binding],
        FIRST_RUN[8],
    ]
    proc, calls = stand.run("--firestore-trigger-location=nam5")
    assert proc.returncode == 0 and writes(calls) == [], proc.stderr


@needs_gcloud
def test_every_command_the_deploy_sends_exists_in_gcloud(tmp_path):
    stand = Stand(tmp_path)
    assert stand.run("--firestore-trigger-location=nam5")[0].returncode == 0
    commands = {tuple(c) for c in stand.calls()}
    assert len(commands) >= 15
    problems = []
    for args in sorted(commands):
        problems += check_gcloud_invocation(list(args), "tools/deploy.py", always_help=False)
    assert not problems, "\n".join(problems)


# --- the Pub/Sub part against Google's emulator ------------------------------------------------


@pytest.fixture(scope="module")
def pubsub_emulator(tmp_path_factory):
    from tools.stack.local import LocalStack
    from tools.stack.servers import StackError

    try:
        stack = LocalStack(
            project="my-project",
            services=("pubsub",),
            workdir=tmp_path_factory.mktemp("pubsub"),
        ).start()
    except StackError as exc:
        pytest.fail(f"Google's Pub/Sub emulator could not start: {exc}")
    yield stack
    stack.stop()


@needs_gcloud
def test_pubsub_settings_applied_through_the_real_gcloud_on_the_emulator(tmp_path, pubsub_emulator):
    """The real gcloud talks to the emulator (an endpoint override and a dummy access token):
    topics, the dead-letter subscription and the trigger subscription's ack deadline, retry and
    dead-letter policy are created and updated there, and read back by a second run that
    writes nothing to Pub/Sub."""
    token = tmp_path / "token"
    token.write_text("emulator")
    gcloud_env = {
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{pubsub_emulator.host('pubsub')}/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    }
    stand = Stand(tmp_path, real=GCLOUD, extra_env=gcloud_env)
    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert writes(calls) == FIRST_RUN

    def describe(kind: str, name: str) -> dict:
        out = subprocess.run(
            [GCLOUD, "pubsub", kind, "describe", name, "--project=my-project", "--format=json"],
            capture_output=True,
            text=True,
            env=os.environ | gcloud_env,
            check=True,
        )
        return json.loads(out.stdout)

    sub = describe("subscriptions", SUB)
    assert {k: sub[k] for k in GOOD_SUB} == GOOD_SUB
    assert sub["topic"] == "projects/my-project/topics/session-processing"
    dead = describe("subscriptions", "session-processing-dead-letter-sub")
    assert {k: dead.get(k) for k in GOOD_DLS} == GOOD_DLS
    assert describe("topics", "session-processing-dead-letter")["name"] == DLT

    proc, calls = stand.run()
    assert proc.returncode == 0, proc.stderr
    assert writes(calls) == []


def test_the_emulator_forwards_dead_letters_as_the_applied_policy_says(
    pubsub_emulator, monkeypatch
):
    """What the emulator supports beyond storing the policy: after ``max_delivery_attempts``
    failed deliveries it forwards the message to the dead-letter topic, with Pub/Sub's
    attributes, where a pull subscription keeps it. (A pull subscription nacked at once stands
    in for the failing pushes; the emulator does not check the Pub/Sub agent's IAM roles, which
    production needs and the deploy grants.)"""
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host("pubsub"))
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    project = "my-project"
    topic, dead = (publisher.topic_path(project, n) for n in ("dl-src", "dl-dst"))
    for name in (topic, dead):
        publisher.create_topic(name=name, timeout=30)
    source, kept = (subscriber.subscription_path(project, n) for n in ("dl-src-sub", "dl-dst-sub"))
    subscriber.create_subscription(request={"name": kept, "topic": dead}, timeout=30)
    subscriber.create_subscription(
        request={
            "name": source,
            "topic": topic,
            "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5},
        },
        timeout=30,
    )
    publisher.publish(topic, b'{"userId":"u","sessionId":"s"}').result(timeout=30)
    attempts = []
    for _ in range(7):
        pulled = subscriber.pull(request={"subscription": source, "max_messages": 1}, timeout=10)
        for received in pulled.received_messages:
            attempts.append(received.delivery_attempt)
            subscriber.modify_ack_deadline(
                request={
                    "subscription": source,
                    "ack_ids": [received.ack_id],
                    "ack_deadline_seconds": 0,
                }
            )
    assert attempts == [1, 2, 3, 4, 5]
    pulled = subscriber.pull(request={"subscription": kept, "max_messages": 1}, timeout=10)
    (letter,) = pulled.received_messages
    assert letter.message.data == b'{"userId":"u","sessionId":"s"}'
    assert letter.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert letter.message.attributes["CloudPubSubDeadLetterSourceSubscription"] == "dl-src-sub"
