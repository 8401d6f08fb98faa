"""`functions-framework --target handle_session` and `--target health` work locally, as the user
asked (production serves both from one process: see test_function.py)."""

from __future__ import annotations

import time

import requests

from tests.helpers import wait_for
from tools import eventlib
from tools.server import BIN, ServerProcess


def start_target(server_env, tmp_path, target: str) -> ServerProcess:
    server = ServerProcess(server_env, tmp_path / f"{target}.log")
    server.argv = [
        str(BIN / "functions-framework"),
        "--target",
        target,
        "--source",
        "main.py",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
    ]
    return server.start()


def answered(url: str, status: int) -> requests.Response | None:
    """``url``'s answer if it is ``status`` (None also while the server is not listening)."""
    try:
        response = requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    return response if response.status_code == status else None


def test_health_target_serves_health_and_ready(server_env, tmp_path):
    server = start_target(server_env, tmp_path, "health")
    try:
        url = server.url + "/ready"
        ready = wait_for(lambda: answered(url, 200), timeout=120, interval=0.2, what=url)
        assert ready.json()["model"] == "ready"
        assert server.get("/health").status_code == 200
        assert server.get("/").status_code == 200
    finally:
        server.stop()


def test_event_target_runs_a_job(server_env, tmp_path, sessions):
    server = start_target(server_env, tmp_path, "handle_session")
    try:
        user, session = sessions.create()
        deadline = time.monotonic() + 120
        response = None
        while time.monotonic() < deadline:
            try:
                response = server.post(*eventlib.pubsub_binary(user, session, "local-1"))
                if response.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)  # 500 while warming up: the pipeline is not ready yet
        assert response is not None and response.status_code == 200, server.log_tail()
        doc = sessions.wait(user, session)
        assert doc["processingStatus"] == "completed"
        assert sessions.image(user, session, "edited.jpg").size == (1200, 800)
        # A cloudevent target answers GET with 405: that is why production adds health routes.
        assert server.get("/").status_code == 405
    finally:
        server.stop()
