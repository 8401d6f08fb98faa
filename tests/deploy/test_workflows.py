"""The GitHub Actions workflows, checked offline with well-kept tools: zizmor (security audit of
workflows; its wheel bundles the binary) and GitHub's workflow JSON schema as vendored by
check-jsonschema. Plus the properties the deployment relies on, read from the parsed YAML."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def _on(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True


def test_there_are_the_two_workflows():
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "deploy.yml"]


def _run_on_the_workflows(name: str, *args: str) -> subprocess.CompletedProcess:
    """A linter of the venv (pinned in requirements-dev.txt) over both workflow files."""
    tool = shutil.which(name, path=str(BIN))
    assert tool, f"{name} is pinned in requirements-dev.txt"
    return subprocess.run(
        [tool, *args, *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_workflows_match_githubs_schema():
    result = _run_on_the_workflows(
        "check-jsonschema", "--builtin-schema", "vendor.github-workflows"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing():
    result = _run_on_the_workflows("zizmor", "--offline", "--no-progress", "--persona", "auditor")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit(path):
    uses = re.findall(r"uses:\s*(\S+)", path.read_text())
    for use in uses:
        if use.startswith("./"):
            continue  # a workflow of this repository
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", use), use


def test_ci_runs_the_readme_test_command():
    ci = _load("ci.yml")
    steps = ci["jobs"]["test"]["steps"]
    assert steps[-1]["run"] == "bash .ci/run"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert {"pull_request", "workflow_call"} <= set(_on(ci))
    assert ci["permissions"] == {} and ci["jobs"]["test"]["permissions"] == {"contents": "read"}


def test_deploy_runs_after_the_tests_with_federation_and_least_privilege():
    deploy = _load("deploy.yml")
    assert set(_on(deploy)) == {"push", "workflow_dispatch"}
    assert _on(deploy)["push"] == {"branches": ["main"]}
    assert deploy["permissions"] == {}
    assert deploy["concurrency"] == {"group": "deploy-production", "cancel-in-progress": False}
    jobs = deploy["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    job = jobs["deploy"]
    assert job["needs"] == "test"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert jobs["test"]["permissions"] == {"contents": "read"}  # id-token only where needed
    auth = next(s for s in job["steps"] if "google-github-actions/auth@" in s.get("uses", ""))
    assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
    text = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "credentials_json" not in text and "GCP_SA_KEY" not in text  # no JSON key
    (submit,) = [s for s in job["steps"] if "gcloud builds submit" in s.get("run", "")]
    assert "--config=cloudbuild.yaml" in submit["run"]
    assert "${{" not in submit["run"]  # values reach the shell as env vars, never inlined


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_ignored_zizmor_finding_has_its_reason_written_next_to_it(path):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "zizmor: ignore[" in line:
            assert lines[number - 1].strip().startswith("#"), f"{path.name}:{number + 1}"
