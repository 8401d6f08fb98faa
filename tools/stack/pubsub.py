"""Pub/Sub administration on the emulator: topics, push subscriptions, publishing.

A mixin of ``LocalStack`` (``tools.stack.local``), which provides ``project`` and ``host``
(``host`` raises ``StackError`` when the stack runs without Pub/Sub). The clients talk gRPC to
the stack's proxy, so ``outage("pubsub")`` reaches them too.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any


class PubSubAdmin:
    """Topics, push subscriptions and publishing for one project on the Pub/Sub emulator."""

    project: str
    host: Callable[[str], str]  # ``127.0.0.1:PORT`` of a service: the stack's method
    _publisher: Any = None
    _subscriber: Any = None

    def close_pubsub_clients(self) -> None:
        """Closes the gRPC channels (they hold the proxy's port); new ones open on demand."""
        for client in (self._publisher, self._subscriber):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.transport.close()
        self._publisher = self._subscriber = None

    def _publisher_client(self) -> Any:
        if self._publisher is None:
            import grpc
            from google.pubsub_v1 import PublisherClient
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            channel = grpc.insecure_channel(self.host("pubsub"))
            self._publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        return self._publisher

    def _subscriber_client(self) -> Any:
        if self._subscriber is None:
            import grpc
            from google.pubsub_v1 import SubscriberClient
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            channel = grpc.insecure_channel(self.host("pubsub"))
            self._subscriber = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return self._subscriber

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, topic: str) -> str:
        """Create ``topic`` (idempotent) and return its full path. Names need >= 3 chars."""
        from google.api_core.exceptions import AlreadyExists

        path = self.topic_path(topic)
        with contextlib.suppress(AlreadyExists):
            self._publisher_client().create_topic(request={"name": path})
        return path

    def create_push_subscription(
        self,
        topic: str,
        name: str,
        endpoint: str,
        *,
        min_backoff_s: float = 1,
        max_backoff_s: float = 10,
        ack_deadline_s: int = 10,
        retry_policy: bool = True,
    ) -> str:
        """Push subscription to ``endpoint``, created fresh (an old one of that name is deleted).

        The emulator POSTs the production push envelope (``{"message": {...}, "subscription"}``)
        and redelivers on anything but 200/201/204 or when no answer came within
        ``ack_deadline_s``. It honours the retry policy only roughly (see the module docstring;
        measured here: with a policy of 1..2 s, a message refused twice was not pushed again
        for minutes). ``retry_policy=False`` leaves the policy out: a refused message is then
        pushed again about every second.
        """
        from google.api_core.exceptions import NotFound
        from google.protobuf import duration_pb2

        def duration(seconds: float) -> duration_pb2.Duration:
            whole = int(seconds)
            return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))

        sub = self._subscriber_client()
        path = self.subscription_path(name)
        with contextlib.suppress(NotFound):
            sub.delete_subscription(request={"subscription": path})
        sub.create_subscription(
            request={
                "name": path,
                "topic": self.create_topic(topic),
                "push_config": {"push_endpoint": endpoint},
                "ack_deadline_seconds": ack_deadline_s,
            }
            | (
                {
                    "retry_policy": {
                        "minimum_backoff": duration(min_backoff_s),
                        "maximum_backoff": duration(max_backoff_s),
                    }
                }
                if retry_policy
                else {}
            )
        )
        return path

    def delete_subscription(self, name: str) -> None:
        """Stop pushes to an endpoint that is going away (a test's HTTP server)."""
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self._subscriber_client().delete_subscription(
                request={"subscription": self.subscription_path(name)}
            )

    def publish(
        self, topic: str, data: dict[str, Any], attributes: dict[str, str] | None = None
    ) -> str:
        """Publish ``data`` as JSON (UTF-8) and return the message id."""
        payload = json.dumps(data, separators=(",", ":")).encode()
        response = self._publisher_client().publish(
            request={
                "topic": self.topic_path(topic),
                "messages": [{"data": payload, "attributes": attributes or {}}],
            }
        )
        return str(response.message_ids[0])

    def reset_pubsub(self) -> None:
        """Delete every subscription and topic of the project."""
        sub = self._subscriber_client()
        pub = self._publisher_client()
        project = f"projects/{self.project}"
        for s in sub.list_subscriptions(request={"project": project}):
            sub.delete_subscription(request={"subscription": s.name})
        for t in pub.list_topics(request={"project": project}):
            pub.delete_topic(request={"topic": t.name})


def decode_push(envelope: dict[str, Any]) -> dict[str, Any]:
    """The JSON payload of a Pub/Sub push envelope (helper for tests and demos)."""
    return json.loads(base64.b64decode(envelope["message"]["data"]))
