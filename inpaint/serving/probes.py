"""The health target's answers: ``/health`` (liveness) and ``/ready`` (readiness).

One function for both ways of serving: ``main.health`` (the functions-framework CLI's HTTP
target) and the production app's routes (``inpaint.serving.app``).
"""

from __future__ import annotations

import flask

from inpaint.serving import process


def probe_response(request: flask.Request) -> flask.Response:
    """``/ready``: 200 once warmed up; anything else: liveness (503 only if warm-up failed)."""
    is_ready_probe = request.path.rstrip("/").endswith("ready")
    code, body = process.WARMUP.readiness() if is_ready_probe else process.WARMUP.health()
    response = flask.jsonify(body)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response
