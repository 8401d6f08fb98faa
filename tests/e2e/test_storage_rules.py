"""storage.rules, as far as this machine can check them.

No emulator available offline evaluates Cloud Storage rules (firebase-tools' Storage emulator
downloads its rules runtime at start; nothing on PyPI, npm or Debian evaluates them), so the
decisions themselves are NOT tested here. What is: the file parses and compiles in Google's
rules compiler (the one inside the Firestore emulator, which speaks the same language), and the
paths, file names, content types and size limit in it agree with what the function reads and
accepts. Firestore's rules, which the emulator does evaluate, are tested case by case in
test_firestore_rules.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import requests

from inpaint.config import Settings
from inpaint.session.events import SessionRef
from inpaint.session.firebase import EDITED, MASK, PHOTO, PREVIEW

RULES = (Path(__file__).resolve().parents[2] / "storage.rules").read_text()


def _compile(stack, text: str) -> requests.Response:
    url = f"{stack.server_url('firestore')}/emulator/v1/projects/demo-storage-rules:securityRules"
    return requests.put(url, json={"rules": {"files": [{"content": text}]}}, timeout=30)


def test_the_storage_rules_parse_and_a_broken_file_does_not(stack):
    assert _compile(stack, RULES).status_code == 200
    broken = RULES.replace("allow read: if isOwner();", "allow read: if (", 1)
    response = _compile(stack, broken)
    assert response.status_code == 400 and "Error compiling rules" in response.text


def test_the_paths_are_the_functions():
    match = re.search(r"match /users/\{userId\}/sessions/\{sessionId\}/\{file\}", RULES)
    assert match and "service firebase.storage" in RULES
    path = SessionRef("U", "S").storage_path(PHOTO)
    assert path == "users/U/sessions/S/original.jpg"


def test_only_the_two_inputs_may_be_created_with_their_types_and_size_limit():
    create = RULES[RULES.index("allow create") : RULES.index("allow update")]
    assert f"file == '{PHOTO}' && request.resource.contentType == 'image/jpeg'" in create
    assert f"file == '{MASK}' && request.resource.contentType == 'image/png'" in create
    assert f"request.resource.size <= {Settings().max_input_bytes}" in create
    for output in (EDITED, PREVIEW):
        assert output not in create
    assert "allow update, delete: if false;" in RULES  # no client rewrites anything
    assert "allow read: if isOwner();" in RULES
