"""Cloud Run function targets. Thin on purpose: everything lives in the ``inpaint`` package.

- ``handle_session``: CloudEvent target bound by Eventarc to the Pub/Sub topic (and optionally to
  Firestore document events). ``functions-framework --target handle_session``.
- ``health``: HTTP target answering ``/health`` (liveness) and ``/ready`` (readiness).
  ``functions-framework --target health``.

Importing this module starts loading the FLUX pipeline in the background
(``inpaint.serving.process``). Production serves both targets from one process:
``inpaint/serving/app.py`` builds the event target's app from this file (functions-framework loads a
target's source by path, as its CLI does) and adds the health routes from
``inpaint.serving.probes``.
"""

from __future__ import annotations

import flask
import functions_framework
from cloudevents.http import CloudEvent

from inpaint.config import get_settings
from inpaint.errors import DeliverLaterError
from inpaint.logs import configure_logging
from inpaint.serving import EVENT_TARGET, process
from inpaint.serving.bodies import acknowledge_unparseable_body
from inpaint.serving.probes import probe_response
from inpaint.session.jobs import handle_event

configure_logging()
if process.launched_by_forking_cli():
    # `functions-framework --target ...` imports this file in gunicorn's master, then forks the
    # worker that serves: load there, not here (a CUDA context does not survive a fork).
    process.warm_up_in_forked_workers()
    if flask.has_app_context() and flask.current_app.name == EVENT_TARGET:
        # The CLI builds the event target's app around this import: bodies its parsing would
        # answer 500 are acknowledged instead (production's app does this after its body limit).
        flask.current_app.before_request(acknowledge_unparseable_body)
else:
    process.WARMUP.start()


@functions_framework.cloud_event
def handle_session(cloud_event: CloudEvent) -> None:
    """Runs the job a session event asks for; raising means "redeliver"."""
    trace = (
        flask.request.headers.get("X-Cloud-Trace-Context") if flask.has_request_context() else None
    )
    handle_event(
        cloud_event,
        process.STORE,
        process.require_model,
        get_settings(),
        trace_header=trace,
        shutdown=process.SHUTDOWN,
        queue=process.GPU_QUEUE,
        stalled=process.gpu_stall,
    )


@functions_framework.errorhandler(DeliverLaterError)
def deliver_later(error: DeliverLaterError) -> flask.Response:
    """503 without a traceback: the delivery is kept (not acknowledged) on purpose."""
    response = flask.jsonify({"acknowledged": False, "reason": str(error)})
    response.status_code = 503
    return response


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    """``/ready``: 200 once warmed up; anything else: liveness (503 only if warm-up failed)."""
    return probe_response(request)
