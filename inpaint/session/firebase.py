"""Firestore and Cloud Storage as the session store's backends (``inpaint.session.store``).

``FirestoreDocuments``: a document's version is its ``update_time``, and an update carries it as
a ``last_update_time`` precondition (optimistic concurrency; no transactions, whose pessimistic
locks make racing claims wait for lock timeouts). ``GcsBlobs``: Cloud Storage generations and
``if_generation_match``. Both retry what Google's clients call transient, except a conditional
document write, which is never retried blindly (``inpaint.session.cas`` re-reads instead).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

import firebase_admin
import google.auth.credentials
from firebase_admin import credentials, firestore, storage
from google.api_core.retry import Retry, if_transient_error

from inpaint.config import Settings
from inpaint.session.store import (
    EDITED,
    MASK,
    OUTPUT_CACHE_CONTROL,
    PHOTO,
    PREVIEW,
    BlobInfo,
    Fields,
    SessionStore,
)

__all__ = ["EDITED", "MASK", "PHOTO", "PREVIEW", "FirebaseStore", "FirestoreDocuments", "GcsBlobs"]


class FirestoreDocuments:
    """``inpaint.session.store.Documents`` on Firestore."""

    def __init__(self, db: Any, retry: Retry, timeout: float) -> None:
        self._db, self._retry, self._timeout = db, retry, timeout

    def get(self, path: str) -> tuple[Fields | None, Any]:
        snap = self._db.document(path).get(retry=self._retry, timeout=self._timeout)
        return (snap.to_dict() if snap.exists else None), snap.update_time

    def update(self, path: str, fields: Fields, version: Any) -> None:
        option = self._db.write_option(last_update_time=version)
        # No automatic retry: if the write landed and only its reply was lost, a blind retry
        # fails its precondition; re-reading lets the caller's decision recognise our write.
        self._db.document(path).update(fields, option=option, retry=None, timeout=self._timeout)


class GcsBlobs:
    """``inpaint.session.store.Blobs`` on Cloud Storage (conditional requests are safe to retry)."""

    def __init__(self, bucket: Any, retry: Retry, timeout: float) -> None:
        self._bucket, self._retry, self._timeout = bucket, retry, timeout

    def stat(self, path: str) -> BlobInfo | None:
        blob = self._bucket.get_blob(path, retry=self._retry, timeout=self._timeout)
        return None if blob is None else BlobInfo(int(blob.generation), blob.size)

    def read(self, path: str, generation: int) -> bytes:
        return self._bucket.blob(path).download_as_bytes(
            retry=self._retry, timeout=self._timeout, if_generation_match=generation
        )

    def write(self, path: str, data: bytes, if_generation_match: int) -> int:
        blob = self._bucket.blob(path)
        blob.cache_control = OUTPUT_CACHE_CONTROL
        blob.upload_from_string(
            data,
            content_type="image/jpeg",
            if_generation_match=if_generation_match,
            retry=self._retry,
            timeout=self._timeout,
        )
        return int(blob.generation)

    def delete(self, path: str, if_generation_match: int | None) -> None:
        self._bucket.blob(path).delete(
            if_generation_match=if_generation_match, retry=self._retry, timeout=self._timeout
        )


class FirebaseStore(SessionStore):
    """The session store on Firebase (Firestore + Storage). Thread-safe: one per process."""

    def __init__(self, settings: Settings, app: firebase_admin.App | None = None) -> None:
        self._app = app or _initialize_app(settings)
        deadline = settings.io_deadline_seconds
        retry = Retry(predicate=if_transient_error, initial=0.25, maximum=4, timeout=deadline)
        timeout = settings.io_timeout_seconds
        super().__init__(
            settings,
            FirestoreDocuments(firestore.client(self._app), retry, timeout),
            GcsBlobs(storage.bucket(settings.bucket_name, app=self._app), retry, timeout),
        )


def _initialize_app(settings: Settings) -> firebase_admin.App:
    """FIREBASE_CREDENTIALS (base64 service-account JSON) > emulators > Application Default."""
    options: dict[str, Any] = {}
    if settings.project_id:
        options["projectId"] = settings.project_id
    if settings.bucket_name:
        options["storageBucket"] = settings.bucket_name
    credential: Any
    if settings.firebase_credentials is not None:
        credential = credentials.Certificate(_decode_service_account(settings))
    elif settings.using_emulators:
        # firebase-admin 7 still wants a credential with the emulators: an anonymous one.
        credential = google.auth.credentials.AnonymousCredentials()
    else:
        credential = credentials.ApplicationDefault()
    name = f"inpaint-{uuid.uuid4().hex[:8]}"
    return firebase_admin.initialize_app(credential, options=options, name=name)


def _decode_service_account(settings: Settings) -> dict[str, Any]:
    assert settings.firebase_credentials is not None
    raw = settings.firebase_credentials.get_secret_value().strip()
    try:
        info = json.loads(raw if raw.startswith("{") else base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("FIREBASE_CREDENTIALS is neither base64 nor JSON") from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError("FIREBASE_CREDENTIALS is not a service-account key")
    return info
