"""monitoring.yaml and eventarc.yaml against the real Config Connector CRD schemas.

The schemas are the CRDs' OpenAPI v3 schemas from GoogleCloudPlatform/k8s-config-connector at
the commit named in tests/data/kcc-crds/SOURCE.md, kept as test data. The API server prunes
fields a structural schema does not declare (they silently do nothing), so an object that
declares ``properties`` is validated here as closed (``additionalProperties: false``) unless
the schema says ``x-kubernetes-preserve-unknown-fields`` or gives its own
``additionalProperties``: a misspelt or invented field fails instead of vanishing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "kcc-crds"
OPTIONAL_PREFIX = "#| "


def closed(schema: object) -> object:
    """The schema with every declared object closed, as the API server's pruning treats it."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def schema_for(document: dict) -> dict:
    group, version = document["apiVersion"].split("/")
    path = CRDS / f"{document['kind']}.{version}.json"
    assert path.exists(), f"no CRD schema for {document['kind']} {version} in {CRDS}"
    schema = json.loads(path.read_text())
    # The CRD's group is fixed by the file; apiVersion and kind are checked here.
    assert group.endswith(".cnrm.cloud.google.com")
    return closed(schema)


def _documents(path: Path, optional: bool = False) -> list[dict]:
    text = path.read_text()
    if optional:
        text = "\n".join(
            line[len(OPTIONAL_PREFIX) :]
            for line in text.splitlines()
            if line.startswith(OPTIONAL_PREFIX)
        )
    return [d for d in yaml.safe_load_all(text) if d is not None]


DOCUMENTS = [
    *(("monitoring.yaml", d) for d in _documents(ROOT / "monitoring.yaml")),
    *(("eventarc.yaml", d) for d in _documents(ROOT / "eventarc.yaml")),
    *(("eventarc.yaml (optional)", d) for d in _documents(ROOT / "eventarc.yaml", True)),
]


@pytest.mark.parametrize(
    ("source", "document"),
    DOCUMENTS,
    ids=[f"{s}:{d['kind']}/{d['metadata']['name']}" for s, d in DOCUMENTS],
)
def test_every_resource_validates_against_its_crd_schema(source, document):
    validator = jsonschema.Draft7Validator(schema_for(document))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{source} {document['kind']}/{document['metadata']['name']} "
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in errors
    )


def test_the_closed_schemas_refuse_an_invented_field():
    """The validation is not vacuous: a misspelt field and a missing required one fail."""
    (policy,) = [d for s, d in DOCUMENTS if d["metadata"]["name"] == "inpaint-dead-letters"]
    validator = jsonschema.Draft7Validator(schema_for(policy))
    assert not list(validator.iter_errors(policy))
    typo = copy.deepcopy(policy)
    typo["spec"]["conditions"][0]["conditionThreshold"]["thresholdVaule"] = 1
    assert list(validator.iter_errors(typo))
    missing = copy.deepcopy(policy)
    del missing["spec"]["combiner"]
    assert list(validator.iter_errors(missing))


def test_the_alerts_the_runbook_explains():
    docs = _documents(ROOT / "monitoring.yaml")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "MonitoringAlertPolicy"}
    assert set(policies) == {
        "inpaint-dead-letters",
        "inpaint-failed-jobs",
        "inpaint-startup-probe",
        "inpaint-slow-jobs",
    }
    channels = {d["metadata"]["name"] for d in docs if d["kind"] == "MonitoringNotificationChannel"}
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for name, policy in policies.items():
        assert [c["name"] for c in policy["spec"]["notificationChannels"]] == ["inpaint-oncall"]
        assert "inpaint-oncall" in channels
        assert name in runbook, f"the runbook explains {name}"
        if any("conditionMatchedLog" in c for c in policy["spec"]["conditions"]):
            # Log-match alerts need a notification rate limit.
            assert policy["spec"]["alertStrategy"]["notificationRateLimit"]["period"]
    metrics = {d["metadata"]["name"] for d in docs if d["kind"] == "LoggingLogMetric"}
    assert metrics == {"inpaint-failed-jobs", "inpaint-ignored-deliveries"}
    failed = policies["inpaint-failed-jobs"]["spec"]["conditions"][0]["conditionThreshold"]
    assert "logging.googleapis.com/user/inpaint-failed-jobs" in failed["filter"]
    # The dead-letter alert watches the subscription eventarc.yaml keeps on the topic.
    eventarc = _documents(ROOT / "eventarc.yaml")
    subs = {d["spec"].get("resourceID") for d in eventarc if d["kind"] == "PubSubSubscription"}
    dead = policies["inpaint-dead-letters"]["spec"]["conditions"][0]["conditionThreshold"]
    (sub,) = [s for s in subs if s and s in dead["filter"]]
    assert sub == "session-processing-dead-letter-sub"
