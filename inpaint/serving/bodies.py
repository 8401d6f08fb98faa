"""Event bodies that the framework's own parsing cannot handle, acknowledged before it tries.

A ``before_request`` hook for the event target's Flask app: the production app
(``inpaint.serving.app``, after its body-size limit) and the functions-framework CLI's app
(``main.py``) both register it.
"""

from __future__ import annotations

import json
import logging

import flask
from cloudevents.exceptions import GenericException, InvalidRequiredFields, MissingRequiredFields
from cloudevents.http import from_http

log = logging.getLogger(__name__)


def acknowledge_unparseable_body() -> tuple[str, int] | None:
    """Acknowledges a body that the framework's own parsing would fail on with a 500.

    functions-framework parses the CloudEvent (``cloudevents.http.from_http``) outside the
    function and catches only missing or invalid required fields; data that is not valid JSON
    for its content type (``DataUnmarshallerError``), JSON nested deeper than the recursion
    limit (``RecursionError``) or bytes that are not UTF-8 escape it and are answered 500, so
    Pub/Sub would redeliver them for a day. The body is parsed here the same way first (in the
    production app it is at most ``INPAINT_MAX_EVENT_BYTES`` by then): a body that is not a
    CloudEvent goes on to the framework's background-event conversion, which reads it as JSON,
    so that must parse too.
    """
    request = flask.request
    if request.method != "POST":
        return None
    body = request.get_data()
    try:
        from_http(request.headers, body)
        return None
    except (MissingRequiredFields, InvalidRequiredFields):
        try:
            json.loads(body)
            return None
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            reason = type(e).__name__
    except (GenericException, ValueError, RecursionError) as e:
        reason = type(e).__name__
    log.warning(
        "malformed event acknowledged without processing",
        extra={"status": 400, "reason": reason, "bytes": len(body)},
    )
    return f"acknowledged, not processed: the body cannot be parsed ({reason})\n", 200
