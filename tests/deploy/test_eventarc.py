"""eventarc.yaml: Config Connector resources that bind the topic to the service.

Every resource is validated against Config Connector's own CRD schemas (kept in
tests/data/kcc-crds, see SOURCE.md there) by tests/deploy/test_kcc_schemas.py; the tests here
check what the resources mean for this service.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EVENTARC = ROOT / "eventarc.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
OPTIONAL_PREFIX = "#| "


API_VERSIONS = {
    "EventarcTrigger": "eventarc.cnrm.cloud.google.com/v1beta1",
    "PubSubTopic": "pubsub.cnrm.cloud.google.com/v1beta1",
    "PubSubSubscription": "pubsub.cnrm.cloud.google.com/v1beta1",
    "IAMServiceAccount": "iam.cnrm.cloud.google.com/v1beta1",
    "IAMPolicyMember": "iam.cnrm.cloud.google.com/v1beta1",
}
METADATA_FIELDS = {"name", "namespace", "labels", "annotations"}
ANNOTATIONS = {"cnrm.cloud.google.com/project-id", "cnrm.cloud.google.com/deletion-policy"}
PLACEHOLDERS = {"PROJECT_ID", "PROJECT_NUMBER", "FIRESTORE_LOCATION"}


def active_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(EVENTARC.read_text()) if d is not None]


def optional_documents() -> list[dict]:
    lines = [
        line[len(OPTIONAL_PREFIX) :] if line.startswith(OPTIONAL_PREFIX) else ""
        for line in EVENTARC.read_text().splitlines()
        if line.startswith(OPTIONAL_PREFIX.rstrip())
    ]
    return [d for d in yaml.safe_load_all("\n".join(lines)) if d is not None]


def all_documents() -> list[dict]:
    return active_documents() + optional_documents()


def spec_paths(node: object, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.append(path)
            paths += spec_paths(value, path)
    elif isinstance(node, list):
        for item in node:
            paths += spec_paths(item, f"{prefix}[]")
    return paths


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d["kind"] == kind]


def named(documents: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in by_kind(documents, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"one {kind} named {name}"
    return matches[0]


def cloud_name(document: dict) -> str:
    return document["spec"].get("resourceID", document["metadata"]["name"])


def cloudbuild_default(key: str) -> str:
    return str(yaml.safe_load(CLOUDBUILD.read_text())["substitutions"][key])


# --- form ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("documents", [active_documents, optional_documents])
def test_every_document_is_a_complete_config_connector_resource(documents):
    docs = documents()
    assert docs
    for doc in docs:
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, doc.get("kind")
        assert doc["kind"] in API_VERSIONS, f"unknown Config Connector kind {doc['kind']}"
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert set(doc["metadata"]) <= METADATA_FIELDS
        assert set(doc["metadata"].get("annotations", {})) <= ANNOTATIONS
        assert isinstance(doc["spec"], dict)


@pytest.mark.parametrize("documents", [active_documents, optional_documents])
def test_specs_use_the_fields_as_this_project_means_them(documents):
    """Field names, types and required fields are validated against the CRD schemas
    themselves (tests/deploy/test_kcc_schemas.py); these are the choices on top of them."""
    for doc in documents():
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "IAMPolicyMember":
            assert ("member" in doc["spec"]) != ("memberFrom" in doc["spec"]), name
            assert "kind" in doc["spec"]["resourceRef"], name
        if kind == "EventarcTrigger":
            run = doc["spec"]["destination"]["cloudRunService"]
            assert {"region", "serviceRef"} <= set(run), name
            for criterion in doc["spec"]["matchingCriteria"]:
                assert {"attribute", "value"} <= set(criterion), name
                assert criterion.get("operator", "match-path-pattern") == "match-path-pattern"
        for path in spec_paths(doc["spec"]):
            if path.endswith("Ref"):
                ref = eval_path(doc["spec"], path)
                assert ("external" in ref) != ("name" in ref), f"{name}: {path} is external or name"


def eval_path(node: dict, path: str) -> dict:
    for key in path.split("."):
        node = node[key]
    return node


def test_references_to_resources_in_the_file_resolve():
    docs = all_documents()
    kinds_by_ref = {
        "serviceAccountRef": "IAMServiceAccount",
        "topicRef": "PubSubTopic",
        "deadLetterTopicRef": "PubSubTopic",
    }
    for doc in docs:
        for path in spec_paths(doc["spec"]):
            leaf = path.rsplit(".", 1)[-1]
            ref = eval_path(doc["spec"], path) if leaf.endswith("Ref") else None
            if ref and "name" in ref and leaf in kinds_by_ref:
                named(docs, kinds_by_ref[leaf], ref["name"])
            if leaf == "resourceRef" and "name" in ref:
                named(docs, ref["kind"], ref["name"])


def test_only_known_placeholders():
    text = "\n".join(
        line for line in EVENTARC.read_text().splitlines() if not line.lstrip().startswith("# ")
    )
    words = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))
    assert words <= PLACEHOLDERS, words - PLACEHOLDERS


# --- the Pub/Sub trigger ------------------------------------------------------------------------


def pubsub_trigger() -> dict:
    triggers = by_kind(active_documents(), "EventarcTrigger")
    (trigger,) = [
        t
        for t in triggers
        if {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
        in t["spec"]["matchingCriteria"]
    ]
    return trigger


def test_trigger_binds_the_session_processing_topic_to_the_service():
    spec = pubsub_trigger()["spec"]
    assert spec["matchingCriteria"] == [
        {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
    ]
    topic = named(
        active_documents(), "PubSubTopic", spec["transport"]["pubsub"]["topicRef"]["name"]
    )
    assert cloud_name(topic) == "session-processing"
    run = spec["destination"]["cloudRunService"]
    assert run["serviceRef"] == {"external": cloudbuild_default("_SERVICE")}
    assert run["region"] == cloudbuild_default("_REGION") == spec["location"]
    assert run.get("path", "/") == "/", "functions-framework serves the CloudEvent on POST /"
    assert spec["projectRef"] == {"external": "projects/PROJECT_ID"}


def test_the_existing_topic_survives_deleting_the_manifest():
    topic = named(active_documents(), "PubSubTopic", "session-processing")
    policy = topic["metadata"]["annotations"].get("cnrm.cloud.google.com/deletion-policy")
    assert policy == "abandon"


def test_trigger_account_may_invoke_the_service_and_nothing_else():
    docs = active_documents()
    account = named(
        docs, "IAMServiceAccount", pubsub_trigger()["spec"]["serviceAccountRef"]["name"]
    )
    bindings = [
        b
        for b in by_kind(docs, "IAMPolicyMember")
        if b["spec"].get("memberFrom", {}).get("serviceAccountRef", {}).get("name")
        == account["metadata"]["name"]
    ]
    assert [b["spec"]["role"] for b in bindings] == ["roles/run.invoker"]
    service = cloudbuild_default("_SERVICE")
    region = cloudbuild_default("_REGION")
    assert bindings[0]["spec"]["resourceRef"] == {
        "kind": "RunService",
        "external": f"projects/PROJECT_ID/locations/{region}/services/{service}",
    }


def test_dead_letter_topic_keeps_its_messages_and_the_pubsub_agent_may_publish():
    docs = active_documents()
    topics = [
        t for t in by_kind(docs, "PubSubTopic") if cloud_name(t) == "session-processing-dead-letter"
    ]
    assert len(topics) == 1
    name = topics[0]["metadata"]["name"]
    subscriptions = [
        s for s in by_kind(docs, "PubSubSubscription") if s["spec"]["topicRef"] == {"name": name}
    ]
    assert subscriptions, "a topic without subscription drops its messages"
    assert subscriptions[0]["spec"]["expirationPolicy"] == {"ttl": ""}, "never expires"
    (publisher,) = [
        b
        for b in by_kind(docs, "IAMPolicyMember")
        if b["spec"]["resourceRef"] == {"kind": "PubSubTopic", "name": name}
    ]
    assert publisher["spec"]["role"] == "roles/pubsub.publisher"
    assert publisher["spec"]["member"] == (
        "serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
    )


def test_the_deploy_ensures_the_same_resources_and_the_subscription_settings():
    """tools/deploy.py applies this flow on every deploy: the names and values here are the
    deploy's, and the settings Config Connector cannot express are stated as the deploy's."""
    from tools.deploy import TRIGGER_EVENT_TYPE, Target

    target = Target(project="PROJECT_ID", project_number="PROJECT_NUMBER", region="us-east4",
                    service=cloudbuild_default("_SERVICE"))  # fmt: skip
    docs = active_documents()
    assert cloud_name(pubsub_trigger()) == target.trigger
    spec = pubsub_trigger()["spec"]
    assert spec["transport"]["pubsub"]["topicRef"]["name"] == target.topic
    assert {c["value"] for c in spec["matchingCriteria"]} == {TRIGGER_EVENT_TYPE}
    assert spec["serviceAccountRef"]["name"] == target.trigger_account_name
    named(docs, "PubSubTopic", target.topic)
    named(docs, "PubSubTopic", target.dead_letter_topic)
    dead = named(docs, "PubSubSubscription", target.dead_letter_subscription)["spec"]
    assert dead["ackDeadlineSeconds"] == target.dead_letter_ack_deadline_s
    assert dead["messageRetentionDuration"] == f"{target.dead_letter_retention_s}s"
    named(docs, "IAMServiceAccount", target.trigger_account_name)
    text = EVENTARC.read_text()
    assert "NOT APPLIED BY THE DEPLOY" in text and "tools/deploy.py" in text
    assert "ack deadline 600 s, retry 10..60 s" in text
    assert (target.ack_deadline_s, target.min_retry_delay_s, target.max_retry_delay_s) == (
        600,
        10,
        60,
    )
    assert "100 delivery attempts" in text and target.max_delivery_attempts == 100
    assert "roles/pubsub.subscriber" in text


# --- the optional Firestore trigger ---------------------------------------------------------------


def test_firestore_trigger_is_off_by_default():
    for trigger in by_kind(active_documents(), "EventarcTrigger"):
        types = [
            c["value"] for c in trigger["spec"]["matchingCriteria"] if c["attribute"] == "type"
        ]
        assert not [t for t in types if "firestore" in t], "the Firestore trigger is opt-in"


def test_optional_firestore_trigger_matches_session_documents():
    docs = optional_documents()
    (trigger,) = by_kind(docs, "EventarcTrigger")
    spec = trigger["spec"]
    criteria = {c["attribute"]: c for c in spec["matchingCriteria"]}
    assert criteria["type"]["value"] == "google.cloud.firestore.document.v1.written"
    assert criteria["database"]["value"] == "(default)"
    assert criteria["document"] == {
        "attribute": "document",
        "operator": "match-path-pattern",
        "value": "users/{userId}/sessions/{sessionId}",
    }
    assert spec["eventDataContentType"] == "application/protobuf"
    assert spec["destination"] == pubsub_trigger()["spec"]["destination"]
    (receiver,) = by_kind(docs, "IAMPolicyMember")
    assert receiver["spec"]["role"] == "roles/eventarc.eventReceiver"
    assert receiver["spec"]["memberFrom"] == {
        "serviceAccountRef": {"name": spec["serviceAccountRef"]["name"]}
    }
    named(active_documents(), "IAMServiceAccount", spec["serviceAccountRef"]["name"])
