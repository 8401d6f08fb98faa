"""The production WSGI app: one process serving the event target and the health routes.

gunicorn builds it in its worker by calling the factory (``inpaint.serving.app:create_app()``,
``SERVE_ARGV``); importing this module builds nothing. ``functions_framework.create_app`` builds
the CloudEvent app from ``main.py`` (the public way: the framework loads a target's source file
by path, as its CLI does; the file's errorhandler is registered on this app then); the health
routes come from ``inpaint.serving.probes`` (the same answers as ``main.health``). Event-level
problems that a redelivery cannot fix (a body that is not a CloudEvent or cannot be parsed at
all, a body over the size limit) are acknowledged with 200 and logged: any other status would
make Pub/Sub redeliver them for a day. SIGTERM (Cloud Run stopping the instance) sets
``process.SHUTDOWN`` before gunicorn's own graceful exit: see ``process.stop_on_sigterm``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import flask
import functions_framework
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from inpaint.config import get_settings
from inpaint.serving import EVENT_TARGET, process
from inpaint.serving.bodies import acknowledge_unparseable_body
from inpaint.serving.probes import probe_response

log = logging.getLogger(__name__)
SOURCE = Path(__file__).resolve().parents[2] / "main.py"


def create_app() -> flask.Flask:
    """The event app with ``GET /health`` and ``GET /ready`` from the health target."""
    app = functions_framework.create_app(EVENT_TARGET, str(SOURCE), "cloudevent")
    for path, name in (("/health", "health"), ("/ready", "ready")):
        app.add_url_rule(path, name, lambda: probe_response(flask.request), methods=["GET"])
    app.config["MAX_CONTENT_LENGTH"] = get_settings().max_event_bytes
    app.before_request(_refuse_long_streamed_body)
    app.before_request(acknowledge_unparseable_body)  # after the body limit
    for error in (BadRequest, RequestEntityTooLarge, UnsupportedMediaType):
        app.register_error_handler(error, _acknowledge_bad_event)
    if threading.current_thread() is threading.main_thread():
        # gunicorn's worker has set its own SIGTERM handler by now (before loading the app).
        process.stop_on_sigterm()
    return app


def _refuse_long_streamed_body() -> None:
    """Applies the body limit to bodies sent without ``Content-Length`` (chunked) too.

    For those, werkzeug does not refuse a body over ``MAX_CONTENT_LENGTH``: it stops reading at
    the limit and hands the view the first N bytes, so an over-limit event could be processed
    from a truncated copy. Read it here with one byte of headroom (the view gets the cached
    bytes) and refuse it whole when it is longer than the limit.
    """
    request = flask.request
    if request.method != "POST" or request.content_length is not None:
        return  # a declared length is checked by MAX_CONTENT_LENGTH before anything is read
    limit = get_settings().max_event_bytes
    request.max_content_length = limit + 1
    if len(request.get_data()) > limit:
        raise RequestEntityTooLarge()


def _acknowledge_bad_event(error: HTTPException) -> tuple[str, int]:
    """Not a CloudEvent, or too large: log it and acknowledge (redelivery cannot help)."""
    log.warning(
        "malformed event acknowledged without processing",
        extra={"status": error.code, "reason": error.name, "bytes": flask.request.content_length},
    )
    return f"acknowledged, not processed: {error.name}\n", 200
