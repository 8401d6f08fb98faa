"""firestore.rules on Google's Firestore emulator: every allowed and refused read and write of
the session contract, as the app's signed-in users make them (REST with the emulator's
unsigned ID tokens), plus a job run by the function (Admin SDK) with the rules loaded.

The rules are loaded into the emulator at run time (``PUT .../:securityRules``; a syntax error
answers 400, so loading is also the compile check). Writes go through ``documents:commit``, the
call the client SDKs make for a batch: a new or re-queued job is a batch of the session write
and the user document's ``lastJobAt`` (server timestamp), which is how the rules rate-limit.
Time is controlled by writing ``lastJobAt`` into the past (as the owner), never by waiting.
"""

# ruff: noqa: E501 (the case tables read best one case per line)
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from inpaint.config import Settings
from inpaint.session.jobs import MAX_SEED
from tools import eventlib

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "firestore.rules"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def id_token(project: str, uid: str) -> str:
    """The emulator's unsigned ID token (firebase-js-sdk's createMockUserToken format)."""
    header = {"alg": "none", "type": "JWT"}
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "iat": 0,
        "exp": 4102444800,
        "auth_time": 0,
        "sub": uid,
        "user_id": uid,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{_b64(header)}.{_b64(payload)}."


def value(v: Any) -> dict:
    """A Python value as a Firestore REST value."""
    if v is None:
        return {"nullValue": None}
    if isinstance(v, bool):
        return {"booleanValue": v}
    if isinstance(v, int):
        return {"integerValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, str):
        return {"stringValue": v}
    if isinstance(v, dt.datetime):
        return {"timestampValue": v.isoformat().replace("+00:00", "Z")}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    if isinstance(v, dict):
        return {"mapValue": {"fields": {k: value(x) for k, x in v.items()}}}
    raise TypeError(type(v))


NOW = object()  # a field set to the server's request time (serverTimestamp())


class App:
    """The app's client, as one signed-in user (or nobody), over the emulator's REST API."""

    def __init__(self, base: str, project: str, uid: str | None) -> None:
        self.root = f"projects/{project}/databases/(default)/documents"
        self.url = f"{base}/v1/{self.root}"
        self.headers = {"Authorization": f"Bearer {id_token(project, uid)}"} if uid else {}

    def _write(self, path: str, fields: dict, *, create: bool, merge: bool) -> dict:
        plain = {k: value(v) for k, v in fields.items() if v is not NOW}
        write: dict = {"update": {"name": f"{self.root}/{path}", "fields": plain}}
        if merge:
            write["updateMask"] = {"fieldPaths": list(plain)}
        if create:
            write["currentDocument"] = {"exists": False}
        stamps = [k for k, v in fields.items() if v is NOW]
        if stamps:
            write["updateTransforms"] = [
                {"fieldPath": k, "setToServerValue": "REQUEST_TIME"} for k in stamps
            ]
        return write

    def commit(self, *writes: dict) -> int:
        response = requests.post(
            f"{self.url}:commit", headers=self.headers, json={"writes": list(writes)}, timeout=10
        )
        return response.status_code

    def read(self, path: str) -> int:
        return requests.get(f"{self.url}/{path}", headers=self.headers, timeout=10).status_code

    def delete(self, path: str) -> int:
        response = requests.post(
            f"{self.url}:commit",
            headers=self.headers,
            json={"writes": [{"delete": f"{self.root}/{path}"}]},
            timeout=10,
        )
        return response.status_code

    # -- what the app does ------------------------------------------------------------------

    def stamp(self, user: str, session: str) -> dict:
        fields = {"lastJobAt": NOW, "lastJobSession": session}
        return self._write(f"users/{user}", fields, create=False, merge=True)

    def create_job(self, user: str, session: str, fields: dict, *, stamp: bool = True) -> int:
        job = self._write(f"users/{user}/sessions/{session}", fields, create=True, merge=False)
        return self.commit(job, *([self.stamp(user, session)] if stamp else []))

    def update_job(self, user: str, session: str, fields: dict, *, stamp: bool = False) -> int:
        job = self._write(f"users/{user}/sessions/{session}", fields, create=False, merge=True)
        return self.commit(job, *([self.stamp(user, session)] if stamp else []))


OK, DENIED = 200, 403
NEW_JOB = {"processingStatus": "queued", "createdAt": NOW}


@pytest.fixture(scope="module")
def rules_loaded(stack):
    """firestore.rules in force on the test project (the Admin SDK and the tests' own clients
    authenticate as the emulator's owner and are not subject to them)."""
    url = f"{stack.server_url('firestore')}/emulator/v1/projects/{stack.project}:securityRules"
    body = {"rules": {"files": [{"content": RULES.read_text()}]}}
    response = requests.put(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    yield
    open_rules = "rules_version = '2';\nservice cloud.firestore { match /{d=**} { allow read, write: if true; } }"
    requests.put(url, json={"rules": {"files": [{"content": open_rules}]}}, timeout=30)


@pytest.fixture
def world(stack, rules_loaded, fb):
    """A fresh user (``me``), a stranger, and nobody; the admin client to set up states."""
    base = f"http://{stack.host('firestore')}"
    me, other = f"u{uuid.uuid4().hex[:10]}", f"u{uuid.uuid4().hex[:10]}"
    db = fb[0]
    return {
        "me": me,
        "other": other,
        "app": App(base, stack.project, me),
        "stranger": App(base, stack.project, other),
        "nobody": App(base, stack.project, None),
        "db": db,
    }


def _session(world, status: str | None = None, **fields) -> str:
    """A session of ``me`` in ``status``, written as the function/admin would."""
    session = f"s{uuid.uuid4().hex[:10]}"
    if status is not None:
        doc = {"processingStatus": status, "prompt": "a cat"} | fields
        world["db"].document(f"users/{world['me']}/sessions/{session}").set(doc)
    return session


def _long_ago(world) -> None:
    """The user's last job was long ago: the rate limit lets the next one through."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    world["db"].document(f"users/{world['me']}").set({"lastJobAt": past}, merge=True)


# --------------------------------------------------------------------------- compile check


def test_the_rules_compile_and_a_broken_file_is_refused(stack):
    url = f"{stack.server_url('firestore')}/emulator/v1/projects/demo-rules-check:securityRules"
    good = requests.put(url, json={"rules": {"files": [{"content": RULES.read_text()}]}})
    assert good.status_code == 200, good.text
    broken = RULES.read_text().replace("allow read: if isOwner(userId);", "allow read: if (", 1)
    bad = requests.put(url, json={"rules": {"files": [{"content": broken}]}})
    assert bad.status_code == 400 and "Error compiling rules" in bad.text


def test_the_rules_bounds_are_the_functions_defaults():
    text = RULES.read_text()
    s = Settings()
    assert f"data.prompt.size() <= {s.max_prompt_chars}" in text
    assert f"data.seed <= {MAX_SEED}" in text
    assert f"data.steps <= {s.max_steps}" in text
    assert "data.guidance >= 0 && data.guidance <= 100" in text


# --------------------------------------------------------------------------- creates

CREATES = [
    ("a new job with no parameters", "app", NEW_JOB, OK),
    (
        "a new job with every parameter",
        "app",
        NEW_JOB | {"prompt": "a corgi", "seed": MAX_SEED, "steps": 50, "guidance": 30.5},
        OK,
    ),
    ("guidance as a whole number", "app", NEW_JOB | {"guidance": 30}, OK),
    ("another user's session", "stranger", NEW_JOB, DENIED),
    ("not signed in", "nobody", NEW_JOB, DENIED),
    ("status other than queued", "app", NEW_JOB | {"processingStatus": "completed"}, DENIED),
    ("no status", "app", {"createdAt": NOW}, DENIED),
    ("forged output path", "app", NEW_JOB | {"editedImagePath": "users/x/edited.jpg"}, DENIED),
    ("forged cost", "app", NEW_JOB | {"cost": 0.0}, DENIED),
    ("forged lease", "app", NEW_JOB | {"leaseOwner": "me:1"}, DENIED),
    ("forged attempts", "app", NEW_JOB | {"attempts": 0}, DENIED),
    ("forged progress", "app", NEW_JOB | {"progress": 1.0}, DENIED),
    ("forged queue position", "app", NEW_JOB | {"queuePosition": 0}, DENIED),
    ("forged error", "app", NEW_JOB | {"errorMessage": "x"}, DENIED),
    ("unknown field", "app", NEW_JOB | {"priority": 1}, DENIED),
    ("prompt not text", "app", NEW_JOB | {"prompt": 42}, DENIED),
    ("prompt too long", "app", NEW_JOB | {"prompt": "x" * 2001}, DENIED),
    ("prompt at the limit", "app", NEW_JOB | {"prompt": "x" * 2000}, OK),
    ("seed negative", "app", NEW_JOB | {"seed": -1}, DENIED),
    ("seed too large", "app", NEW_JOB | {"seed": MAX_SEED + 1}, DENIED),
    ("seed not whole", "app", NEW_JOB | {"seed": 1.5}, DENIED),
    ("steps zero", "app", NEW_JOB | {"steps": 0}, DENIED),
    ("steps over the limit", "app", NEW_JOB | {"steps": 51}, DENIED),
    ("steps as text", "app", NEW_JOB | {"steps": "28"}, DENIED),
    ("guidance over 100", "app", NEW_JOB | {"guidance": 100.5}, DENIED),
    ("guidance negative", "app", NEW_JOB | {"guidance": -1}, DENIED),
    ("guidance as text", "app", NEW_JOB | {"guidance": "high"}, DENIED),
    (
        "createdAt not the server's time",
        "app",
        NEW_JOB | {"createdAt": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        DENIED,
    ),
]


@pytest.mark.parametrize(
    ("case", "who", "fields", "expected"), CREATES, ids=[c[0] for c in CREATES]
)
def test_create(world, case, who, fields, expected):
    session = _session(world)
    client = world[who]
    assert client.create_job(world["me"], session, fields) == expected
    exists = world["db"].document(f"users/{world['me']}/sessions/{session}").get().exists
    assert exists is (expected == OK)


# --------------------------------------------------------------------------- session and user IDs

# (ID, accepted by the function): both sides are checked, the function's validate_id and the
# rules on the emulator. 129 characters, '!', '.', 'é' and a space are valid Firestore document
# IDs that the function would acknowledge without a job.
IDS = [
    ("s", True),
    ("x" * 128, True),
    ("A-z_0-9", True),
    ("x" * 129, False),
    ("bad!", False),
    ("a.b", False),
    ("café", False),
    ("a b", False),
]


def _accepted_by_the_function(name: str) -> bool:
    from inpaint.errors import InvalidEventError
    from inpaint.session.events import validate_id

    try:
        validate_id("sessionId", name)
    except InvalidEventError:
        return False
    return True


def test_the_rules_take_the_functions_id_definition():
    """One definition: the rules' idOk() pattern is inpaint/session/events.py's ID_PATTERN, and the
    rules apply it to the user and the session ID of every new or re-queued job."""
    from inpaint.session.events import ID_PATTERN

    text = RULES.read_text()
    (pattern,) = re.findall(r"function idOk\(id\) \{\s*return id\.matches\('([^']*)'\);", text)
    assert pattern == ID_PATTERN
    assert text.count("&& idOk(userId) && idOk(sessionId)") == 2
    for name, accepted in IDS:
        assert _accepted_by_the_function(name) is accepted, name
        assert (re.fullmatch(pattern, name) is not None) is accepted, name


@pytest.mark.parametrize(("session", "accepted"), IDS, ids=[f"{len(i)}:{i[:12]}" for i, _ in IDS])
def test_a_session_id_the_function_refuses_cannot_be_created(world, session, accepted):
    assert _accepted_by_the_function(session) is accepted
    expected = OK if accepted else DENIED
    assert world["app"].create_job(world["me"], session, NEW_JOB) == expected
    exists = world["db"].document(f"users/{world['me']}/sessions/{session}").get().exists
    assert exists is accepted
    user = world["db"].document(f"users/{world['me']}").get()
    assert (user.exists and user.to_dict().get("lastJobSession") == session) is accepted, (
        "a refused job does not use the user's rate-limit stamp"
    )


def test_a_session_with_a_refused_id_cannot_be_requeued(world):
    session = "legacy.session"
    world["db"].document(f"users/{world['me']}/sessions/{session}").set(
        {"processingStatus": "completed", "prompt": "a cat"}
    )
    _long_ago(world)
    fields = {"processingStatus": "queued", "requestedAt": NOW}
    assert world["app"].update_job(world["me"], session, fields, stamp=True) == DENIED


def test_a_user_id_the_function_refuses_cannot_create_jobs(stack, rules_loaded):
    assert not _accepted_by_the_function("user.name")
    base = f"http://{stack.host('firestore')}"
    app = App(base, stack.project, "user.name")
    assert app.create_job("user.name", f"s{uuid.uuid4().hex[:10]}", NEW_JOB) == DENIED


def test_a_job_without_the_rate_limit_stamp_is_refused(world):
    assert world["app"].create_job(world["me"], _session(world), NEW_JOB, stamp=False) == DENIED


def test_one_stamp_cannot_cover_two_jobs_of_one_batch(world):
    app, me = world["app"], world["me"]
    first, second = _session(world), _session(world)
    jobs = [
        app._write(f"users/{me}/sessions/{s}", NEW_JOB, create=True, merge=False)
        for s in (first, second)
    ]
    assert app.commit(*jobs, app.stamp(me, first)) == DENIED
    assert app.commit(jobs[0], app.stamp(me, second)) == DENIED  # a stamp for another session
    assert app.commit(jobs[0], app.stamp(me, first)) == OK


def test_one_job_per_30_seconds_per_user(world):
    app, me = world["app"], world["me"]
    assert app.create_job(me, _session(world), NEW_JOB) == OK
    assert app.create_job(me, _session(world), NEW_JOB) == DENIED  # at once: too soon
    # A stamp with a time of the client's choosing, or set back to the past, is refused.
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    user_write = app._write(
        f"users/{me}", {"lastJobAt": past, "lastJobSession": "x"}, create=False, merge=True
    )
    assert app.commit(user_write) == DENIED
    assert app.delete(f"users/{me}") == DENIED  # deleting the stamp would reset the limit
    _long_ago(world)  # 30 s pass (the test owns this clock)
    assert app.create_job(me, _session(world), NEW_JOB) == OK
    # Other users are not limited by this one.
    other = world["stranger"]
    session = f"s{uuid.uuid4().hex[:10]}"
    assert other.create_job(world["other"], session, NEW_JOB) == OK


# --------------------------------------------------------------------------- updates

UPDATES = [
    # (case, status before, client, fields, stamped, expected)
    ("cancel a queued job", "queued", "app", {"processingStatus": "cancelled"}, False, OK),
    ("cancel a running job", "processing", "app", {"processingStatus": "cancelled"}, False, OK),
    (
        "cancel a completed job",
        "completed",
        "app",
        {"processingStatus": "cancelled"},
        False,
        DENIED,
    ),
    (
        "cancel someone else's",
        "queued",
        "stranger",
        {"processingStatus": "cancelled"},
        False,
        DENIED,
    ),
    ("cancel signed out", "queued", "nobody", {"processingStatus": "cancelled"}, False, DENIED),
    (
        "cancel and forge cost",
        "processing",
        "app",
        {"processingStatus": "cancelled", "cost": 0.0},
        False,
        DENIED,
    ),
    (
        "re-queue a completed job",
        "completed",
        "app",
        {"processingStatus": "queued", "prompt": "a dog", "requestedAt": NOW},
        True,
        OK,
    ),
    ("re-queue a failed job", "failed", "app", {"processingStatus": "queued"}, True, OK),
    (
        "re-queue a cancelled job",
        "cancelled",
        "app",
        {"processingStatus": "queued", "seed": 7},
        True,
        OK,
    ),
    (
        "re-queue without the stamp",
        "completed",
        "app",
        {"processingStatus": "queued"},
        False,
        DENIED,
    ),
    ("re-queue a running job", "processing", "app", {"processingStatus": "queued"}, True, DENIED),
    (
        "re-queue a queued job",
        "queued",
        "app",
        {"processingStatus": "queued", "steps": 4},
        True,
        DENIED,
    ),
    (
        "re-queue with bad steps",
        "completed",
        "app",
        {"processingStatus": "queued", "steps": 500},
        True,
        DENIED,
    ),
    (
        "re-queue and clear the outputs",
        "completed",
        "app",
        {"processingStatus": "queued", "editedImagePath": None},
        True,
        DENIED,
    ),
    (
        "re-queue someone else's",
        "completed",
        "stranger",
        {"processingStatus": "queued"},
        True,
        DENIED,
    ),
    ("mark it completed", "processing", "app", {"processingStatus": "completed"}, False, DENIED),
    ("mark it failed", "processing", "app", {"processingStatus": "failed"}, False, DENIED),
    ("write progress", "processing", "app", {"progress": 1.0}, False, DENIED),
    ("write the lease", "processing", "app", {"leaseExpiresAt": NOW}, False, DENIED),
    ("change the prompt while running", "processing", "app", {"prompt": "a dog"}, False, DENIED),
    ("change the prompt of a queued job", "queued", "app", {"prompt": "a dog"}, False, DENIED),
]


@pytest.mark.parametrize(
    ("case", "status", "who", "fields", "stamped", "expected"), UPDATES, ids=[u[0] for u in UPDATES]
)
def test_update(world, case, status, who, fields, stamped, expected):
    session = _session(world, status, editedImagePath="users/x/edited.jpg", cost=0.01)
    _long_ago(world)
    ref = world["db"].document(f"users/{world['me']}/sessions/{session}")
    before = ref.get().to_dict()
    client = world[who]
    if who == "stranger" and stamped:
        # The stranger stamps its own user document: still not allowed to touch ours.
        path = f"users/{world['me']}/sessions/{session}"
        job = client._write(path, fields, create=False, merge=True)
        code = client.commit(job, client.stamp(world["other"], session))
    else:
        code = client.update_job(world["me"], session, fields, stamp=stamped)
    assert code == expected
    after = ref.get().to_dict()
    if expected == OK:
        assert after["processingStatus"] == fields["processingStatus"]
        assert after["editedImagePath"] == before["editedImagePath"]  # the function's, kept
    else:
        assert after == before


# --------------------------------------------------------------------------- reads, deletes


@pytest.mark.parametrize(
    ("who", "expected"), [("app", OK), ("stranger", DENIED), ("nobody", DENIED)]
)
def test_read_own_sessions_and_user_document_only(world, who, expected):
    session = _session(world, "completed")
    _long_ago(world)
    client = world[who]
    assert client.read(f"users/{world['me']}/sessions/{session}") == expected
    assert client.read(f"users/{world['me']}") == expected


@pytest.mark.parametrize(
    ("who", "expected"), [("app", OK), ("stranger", DENIED), ("nobody", DENIED)]
)
def test_delete_own_sessions_only(world, who, expected):
    session = _session(world, "completed")
    assert world[who].delete(f"users/{world['me']}/sessions/{session}") == expected


# --------------------------------------------------------------------------- the function


def test_the_function_is_not_subject_to_the_rules(world, shared_server, sessions):
    """A job the app created through the rules is claimed, heartbeated and completed by the
    function (Admin SDK) with every field the rules keep from clients."""
    app, me = world["app"], world["me"]
    user, session = sessions.create(user=me, create_doc=False)
    assert app.create_job(me, session, NEW_JOB | {"prompt": "a cat", "steps": 2}) == OK
    assert shared_server.post(*eventlib.pubsub_binary(user, session)).status_code == 200
    doc = sessions.doc(user, session)
    assert doc["processingStatus"] == "completed" and doc["attempts"] == 1
    assert re.fullmatch(r"users/.+/edited\.jpg", doc["editedImagePath"])
    assert doc["cost"] > 0 and doc["leaseOwner"] is None
    # The user now reads the result, cancels nothing, and re-queues it (30 s later).
    assert app.read(f"users/{me}/sessions/{session}") == OK
    _long_ago(world)
    assert app.update_job(me, session, {"processingStatus": "queued"}, stamp=True) == OK
