"""Optimistic concurrency on one document: read, decide, write only if nobody wrote between.

``compare_and_set`` is the generic loop (the document store is passed in as ``read`` and
``write``); ``inpaint.session.store`` runs every claim, heartbeat and final write through it, with a
Firestore document's ``update_time`` as the version.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity
from google.api_core import exceptions as gexc
from google.api_core.retry import if_transient_error

from inpaint.errors import TransientError

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 20


class _WrittenMeanwhile(Exception):
    """Someone wrote the document between our read and our conditional write: read again."""


class _NoAnswer(Exception):
    """A conditional write got no answer (it may have landed): read again and decide."""


def _cas_backoff(state: tenacity.RetryCallState) -> float:
    """A short random pause growing with the attempt, so racing writers spread out."""
    return random.uniform(0.005, 0.05) * state.attempt_number


T = TypeVar("T")


def compare_and_set(
    read: Callable[[], tuple[dict[str, Any] | None, Any]],
    write: Callable[[dict[str, Any], Any], None],
    decide: Callable[[dict[str, Any] | None], tuple[T, dict[str, Any] | None]],
    *,
    give_up_at: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[tenacity.RetryCallState], float] = _cas_backoff,
    attempts: int = _CAS_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Read, decide, write only if nobody wrote in between (optimistic concurrency).

    ``read`` returns the document and its version, ``write`` writes fields on condition that
    the version is unchanged. Of N racing writers exactly one succeeds; the others re-read and
    decide again (this avoids Firestore transactions, whose pessimistic locks make N contending
    claims wait for lock timeouts and abort in lockstep). A write without an answer may have
    landed, so it is never repeated blindly: the re-read lets ``decide`` recognise it. Gives up
    with TransientError after ``attempts`` lost races, and re-raises a write error that is not
    a lost race, or a lost answer once ``clock()`` passes ``give_up_at``.
    """

    def attempt() -> T:
        document, version = read()
        result, fields = decide(document)
        if fields is None:
            return result
        try:
            write(fields, version)
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound) as exc:
            raise _WrittenMeanwhile from exc
        except Exception as exc:
            if not _unknown_outcome(exc) or clock() > give_up_at:
                raise
            log.warning("conditional write got no answer (%s); re-reading", type(exc).__name__)
            raise _NoAnswer from exc
        return result

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((_WrittenMeanwhile, _NoAnswer)),
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait,
        sleep=sleep,
    )
    try:
        return retrying(attempt)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        if isinstance(last, _NoAnswer) and isinstance(last.__cause__, Exception):
            raise last.__cause__ from None
        raise TransientError(f"{what} is changing too fast to update; retry later") from None


def _unknown_outcome(exc: BaseException) -> bool:
    """A write failure after which the write may or may not have landed."""
    return if_transient_error(exc) or isinstance(exc, gexc.DeadlineExceeded | TimeoutError)
