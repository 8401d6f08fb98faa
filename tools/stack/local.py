"""The stack: Firestore, Cloud Storage and Pub/Sub servers behind outage proxies."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import firebase_admin

from tools.stack.proxy import TcpProxy
from tools.stack.pubsub import PubSubAdmin
from tools.stack.servers import (
    HOST,
    SERVICES,
    Server,
    StackError,
    http_request,
    server_commands,
)

# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------

_LIVE: set[LocalStack] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Interpreter exit without stop(): still take the servers down (no orphan JVMs)."""
    with _LIVE_LOCK:
        stacks = list(_LIVE)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


class LocalStack(PubSubAdmin):
    """Firestore, Cloud Storage and Pub/Sub servers on loopback, with proxies for outages.

    ``env`` holds the variables client libraries read (``FIRESTORE_EMULATOR_HOST``,
    ``STORAGE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``) plus the project/bucket settings of the
    service; they point at the proxies, never straight at the servers.
    """

    def __init__(
        self,
        project: str = "demo-inpaint",
        bucket: str | None = None,
        workdir: Path | None = None,
        services: tuple[str, ...] = SERVICES,
        *,
        java: str | None = None,
        firestore_jar: Path | None = None,
        pubsub_jar: Path | None = None,
        gcs_binary: Path | None = None,
        start_timeout_s: float = 60.0,
        keep_workdir: bool | None = None,
    ) -> None:
        unknown = sorted(set(services) - set(SERVICES))
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; choose from {list(SERVICES)}")
        self.project = project
        self.bucket = bucket or f"{project}.firebasestorage.app"
        self.services = tuple(s for s in SERVICES if s in services)
        self.java = java
        self.firestore_jar = firestore_jar
        self.pubsub_jar = pubsub_jar
        self.gcs_binary = gcs_binary
        self.start_timeout_s = start_timeout_s
        # A workdir we created is ours to delete; a given one holds logs the caller wants.
        self.keep_workdir = keep_workdir if keep_workdir is not None else workdir is not None
        self.workdir: Path | None = Path(workdir) if workdir else None
        self._servers: dict[str, Server] = {}
        self._proxies: dict[str, TcpProxy] = {}
        self._ready = False
        self._saved_env: dict[str, str | None] | None = None
        self._apps: list[str] = []
        self._lock = threading.RLock()
        self.timings: dict[str, float] = {}

    # -- life cycle -------------------------------------------------------------------------

    def _resolve(self) -> dict[str, list[str]]:
        """Find every executable first, so a missing one fails before anything is started."""
        return server_commands(
            self.services,
            java_name=self.java,
            firestore_jar=self.firestore_jar,
            pubsub_jar=self.pubsub_jar,
            gcs_binary=self.gcs_binary,
        )

    def start(self) -> LocalStack:
        """Start every service (in parallel), wait until each answers, create the bucket."""
        with self._lock:
            if self._servers:
                return self
            base = self._resolve()
            t0 = time.monotonic()
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="inpaint-stack-"))
            self.workdir.mkdir(parents=True, exist_ok=True)
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._start_servers(base)
                self._ready = True
                if "storage" in self.services:
                    self._create_bucket()
            except BaseException:
                self.keep_workdir = True  # the error message points at the logs in there
                self.stop()
                raise
            self.timings["total_s"] = time.monotonic() - t0
            return self

    def _make_server(self, name: str, base: list[str]) -> Server:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        if name == "firestore":
            return Server(name, lambda p: [*base, "--host", HOST, "--port", str(p)], "/", log)
        if name == "pubsub":
            return Server(name, lambda p: [*base, f"--host={HOST}", f"--port={p}"], "/", log)
        data = self.workdir / "gcs-data"
        data.mkdir(exist_ok=True)
        return Server(
            name,
            lambda p: [
                *base,
                *("-scheme", "http", "-host", HOST, "-port", str(p)),
                *("-backend", "memory", "-data", str(data), "-log-level", "warn"),
                # Resumable uploads follow the Location header: keep them on the proxy port.
                *("-external-url", f"http://{HOST}:{self._external_port('storage')}"),
            ],
            "/storage/v1/b",
            log,
        )

    def _external_port(self, name: str) -> int:
        """Port clients use for ``name``: its proxy's, bound before the server starts."""
        return self._proxies[name].port

    def _start_servers(self, base: dict[str, list[str]]) -> None:
        # Proxies need the server port and fake-gcs needs the proxy port (-external-url), so
        # bind the client-facing listeners first and point them at the servers afterwards.
        for name in self.services:
            self._proxies[name] = TcpProxy(name, 0)
        servers = {name: self._make_server(name, base[name]) for name in self.services}
        deadline = time.monotonic() + self.start_timeout_s
        retries = 2
        waiting = list(servers.values())
        for server in waiting:
            server.spawn()
            self._servers[server.name] = server
        # Probe all servers round-robin so each one's ready time is its own.
        while waiting:
            for server in list(waiting):
                try:
                    if server.poll_ready(deadline):
                        waiting.remove(server)
                        self.timings[f"{server.name}_ready_s"] = server.ready_s
                except StackError:
                    exited = server.proc is not None and server.proc.poll() is not None
                    if not (retries and exited and server.bind_failed()):
                        raise
                    retries -= 1  # its port was taken between free_port() and bind: new port
                    server.stop()
                    server.spawn()
            time.sleep(0.05)
        for name, proxy in self._proxies.items():
            proxy.upstream_port = self._servers[name].port
            proxy.start()

    def _create_bucket(self) -> None:
        url = f"{self.server_url('storage')}/storage/v1/b?project={self.project}"
        status, body = http_request("POST", url, json.dumps({"name": self.bucket}).encode())
        if status not in (200, 409):
            raise StackError(f"cannot create bucket {self.bucket}: HTTP {status} {body[:300]!r}")

    def stop(self) -> None:
        """Stop every server (whole process groups), close proxies, clients and the env."""
        with self._lock:
            self.close_pubsub_clients()
            if self._apps:
                import firebase_admin

                for name in self._apps:
                    with contextlib.suppress(ValueError):
                        firebase_admin.delete_app(firebase_admin.get_app(name))
                self._apps.clear()
            self._ready = False
            for proxy in self._proxies.values():
                proxy.close()
            self._proxies.clear()
            for server in self._servers.values():
                server.stop()
            self._servers.clear()
            self.restore_env()
            if self.workdir is not None and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exited(self) -> list[str]:
        """Names of the servers whose process has exited (for the CLI's watch loop)."""
        return [n for n, s in self._servers.items() if s.proc and s.proc.poll() is not None]

    @property
    def running(self) -> bool:
        return bool(self._servers) and all(
            s.proc is not None and s.proc.poll() is None for s in self._servers.values()
        )

    # -- addresses and environment -----------------------------------------------------------

    def _need(self, service: str) -> None:
        if service not in SERVICES:
            raise StackError(f"unknown service {service!r}; choose from {list(SERVICES)}")
        if not self._ready or service not in self._proxies:
            raise StackError(f"{service} is not running in this stack (services={self.services})")

    def host(self, service: str) -> str:
        """``127.0.0.1:PORT`` that clients use for ``service`` (the proxy)."""
        self._need(service)
        return f"{HOST}:{self._proxies[service].port}"

    def server_url(self, service: str) -> str:
        """The server itself, bypassing the proxy (admin calls keep working during outages)."""
        return f"http://{HOST}:{self._servers[service].port}"

    @property
    def log_paths(self) -> dict[str, Path]:
        return {name: s.log_path for name, s in self._servers.items()}

    @property
    def env(self) -> dict[str, str]:
        """Variables that point client libraries and the service at this stack."""
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GCLOUD_PROJECT": self.project,
            "INPAINT_PROJECT_ID": self.project,
            "INPAINT_BUCKET": self.bucket,
            "FIREBASE_STORAGE_BUCKET": self.bucket,
        }
        if not self._ready:
            raise StackError("the stack is not started: call start() first")
        if "firestore" in self._proxies:
            env["FIRESTORE_EMULATOR_HOST"] = self.host("firestore")
        if "storage" in self._proxies:
            env["STORAGE_EMULATOR_HOST"] = f"http://{self.host('storage')}"
        if "pubsub" in self._proxies:
            env["PUBSUB_EMULATOR_HOST"] = self.host("pubsub")
        return env

    def apply_env(self) -> None:
        """``os.environ.update(self.env)``; ``stop()`` puts the previous values back."""
        env = self.env
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    def restore_env(self) -> None:
        """Undo ``apply_env`` (so a later stack in the same process gets its own ports)."""
        saved, self._saved_env = self._saved_env, None
        for key, value in (saved or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def exports(self) -> str:
        """Shell-sourceable ``export K=V`` lines."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env.items()))

    # -- data -------------------------------------------------------------------------------

    def reset(self, *, pubsub: bool = False) -> None:
        """Delete all Firestore documents and all objects in the bucket (the bucket stays).

        With ``pubsub=True`` also delete every subscription and topic of the project, so push
        subscriptions of an earlier test stop hammering endpoints that are gone.
        Talks to the servers directly, so it works during an ``outage()`` too.
        """
        if "firestore" in self._servers:
            url = (
                f"{self.server_url('firestore')}/emulator/v1/projects/{self.project}"
                "/databases/(default)/documents"
            )
            status, body = http_request("DELETE", url)
            if status != 200:
                raise StackError(f"Firestore reset failed: HTTP {status} {body[:300]!r}")
        if "storage" in self._servers:
            for name in self.list_objects():
                quoted = urllib.parse.quote(name, safe="")
                url = f"{self.server_url('storage')}/storage/v1/b/{self.bucket}/o/{quoted}"
                status, body = http_request("DELETE", url)
                if status not in (200, 204, 404):
                    raise StackError(f"cannot delete gs://{self.bucket}/{name}: HTTP {status}")
        if pubsub and "pubsub" in self._servers:
            self.reset_pubsub()

    def list_objects(self) -> list[str]:
        """Names of all objects in the bucket (straight from the server)."""
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode({"pageToken": token} if token else {})
            url = f"{self.server_url('storage')}/storage/v1/b/{self.bucket}/o?{query}"
            status, body = http_request("GET", url)
            if status != 200:
                raise StackError(f"cannot list gs://{self.bucket}: HTTP {status} {body[:300]!r}")
            page = json.loads(body or b"{}")
            names.extend(item["name"] for item in page.get("items", []))
            token = page.get("nextPageToken", "")
            if not token:
                return names

    # -- outages ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def outage(self, service: str) -> Iterator[None]:
        """Make ``service`` unreachable inside the block; its data survives.

        Live connections are reset and new ones are accepted and reset at once, on the same
        port, so clients see ECONNRESET / UNAVAILABLE quickly rather than hanging. gRPC clients
        (Firestore) reconnect with their own backoff afterwards, so the first call after the
        block may take up to a second or two.
        """
        self._need(service)
        proxy = self._proxies[service]
        proxy.set_down(True)
        try:
            yield
        finally:
            proxy.set_down(False)

    def drop_reply_once(self, service: str, pattern: bytes) -> TcpProxy:
        """Arms ``service``'s proxy to lose the reply of the next gRPC request containing
        ``pattern`` (see ``TcpProxy.drop_reply_once``); returns the proxy for its counters."""
        self._need(service)
        proxy = self._proxies[service]
        proxy.drop_reply_once(pattern)
        return proxy

    # -- Firebase ---------------------------------------------------------------------------

    def firebase_app(self, name: str | None = None) -> firebase_admin.App:
        """A firebase_admin App on this stack (anonymous credentials, emulator env applied).

        firebase_admin only uses the emulators when FIRESTORE_EMULATOR_HOST /
        STORAGE_EMULATOR_HOST are in ``os.environ`` when its clients are first created, so this
        applies the env if it is not applied yet. Apps created here are deleted on ``stop()``:
        their cached clients hold this stack's ports.
        """
        import firebase_admin
        from google.auth.credentials import AnonymousCredentials

        if any(os.environ.get(k) != v for k, v in self.env.items()):
            self.apply_env()
        app_name = name or firebase_admin._DEFAULT_APP_NAME
        try:
            return firebase_admin.get_app(app_name)
        except ValueError:
            pass
        app = firebase_admin.initialize_app(
            AnonymousCredentials(),  # type: ignore[arg-type]
            options={"projectId": self.project, "storageBucket": self.bucket},
            name=app_name,
        )
        self._apps.append(app_name)
        return app
