"""The serving process: how requests arrive and how the process stays healthy.

Rooms: ``app`` (the production WSGI app: the event target from ``main.py`` plus the health
routes, body limits), ``process`` (the process-wide state: background warm-up, the session
store, the GPU queue, shutdown on SIGTERM), ``probes`` (the ``/health`` and ``/ready`` answers)
and ``bodies`` (event bodies the framework cannot parse, acknowledged).

The production serving command is defined here, in one place: the Dockerfile's CMD and the tests
that start a real server both use ``SERVE_ARGV``: gunicorn (one worker, several threads, no
preload; see ``gunicorn.conf.py``) calling the app factory ``inpaint.serving.app:create_app()``
in its worker, which builds the functions-framework app of the event target plus the health
routes.
"""

from __future__ import annotations

SERVE_ARGV: list[str] = [
    "gunicorn",
    "--config",
    "gunicorn.conf.py",
    "inpaint.serving.app:create_app()",
]
EVENT_TARGET = "handle_session"
