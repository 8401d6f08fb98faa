"""The production serving command, in one place.

The Dockerfile's CMD and the tests that start a real server both use ``SERVE_ARGV``: gunicorn
(one worker, several threads, no preload; see ``gunicorn.conf.py``) serving ``inpaint.wsgi:app``,
which is the functions-framework app of the event target plus the health routes.
"""

from __future__ import annotations

SERVE_ARGV: list[str] = ["gunicorn", "--config", "gunicorn.conf.py", "inpaint.wsgi:app"]
EVENT_TARGET = "handle_session"
