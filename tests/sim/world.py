"""A deterministic simulation of the service: the real decision code on a virtual clock.

What is real (imported from ``inpaint``, unchanged): the session store (``SessionStore``: claims
through ``claims.decide`` and ``cas.compare_and_set``, lease writes, ``claims.finish``, refunds),
the output protocol (``store.write_outputs_steps``, interleaved at each of its I/O steps), the fair
GPU queue (``gpuqueue.FairQueue``), which stops spend an attempt (``jobs.spends_attempt``), the
heartbeat's decisions (``heartbeat.heartbeat_tick``, ``heartbeat.heartbeat_interval``), the hung-GPU
verdict (``process.stall_reason``), the parameter checks (``jobs.job_params``) and how each claim
outcome is answered (``claims.Outcome.acknowledges``).

What is simulated (simpy processes on one virtual clock, no threads, no wall time): Firestore and
Storage (``tests/sim/fakes``, contract-tested against the real servers), a Pub/Sub push
subscription (at-least-once, duplicates even after an acknowledgement, the ack deadline, retry
backoff, dead-lettering), Cloud Run (instances with C request slots, 429 after a 10 s pending
window, SIGTERM then SIGKILL 10 s later, liveness probes, replacements), the app (create, cancel,
re-queue, delete, re-publish) and faults (crashes, hung model calls, lost requests and replies).

The job process follows ``jobs.JobRunner``'s numbered steps; each store call is one atomic step
after a small I/O latency, so other actors can act between any two of them. ``Oracle`` records
what happened and ``check_*`` state the invariants (docs/reliability.md lists them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy
from google.api_core import exceptions as gexc

from inpaint.config import Settings
from inpaint.errors import (
    DeliverLaterError,
    DeviceStalledError,
    LeaseLostError,
    OutputsRaceError,
    PermanentError,
    ShutdownError,
    TransientError,
)
from inpaint.serving.process import stall_reason
from inpaint.session.events import PUBSUB_TYPE, JobRequest, SessionRef
from inpaint.session.gpuqueue import FairQueue, Ticket, turn_bound
from inpaint.session.heartbeat import Tick, heartbeat_interval, heartbeat_tick
from inpaint.session.jobs import JobRunner, Phase, job_params
from inpaint.session.store import (
    MASK,
    PHOTO,
    ClaimOutcome,
    SessionStore,
    write_outputs_steps,
)
from tests.sim.fakes import Faults, MemoryBlobs, MemoryDocuments

EPOCH = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
TRANSIENT = (gexc.GoogleAPICallError, TransientError)
ACKNOWLEDGING = frozenset({102, 200, 201, 202, 204})  # Pub/Sub push, as documented


@dataclass(frozen=True)
class Config:
    """The platform and the job's timings (production's settings where they exist)."""

    instances: int = 2  # Cloud Run instances kept running (max instances)
    concurrency: int = 4  # --concurrency = INPAINT_MAX_QUEUED_JOBS
    steps: int = 28
    step_seconds: float = 1.0
    download_seconds: float = 1.0
    encode_seconds: float = 0.5
    io_seconds: float = 0.05  # before each store call
    ack_deadline: float = 600.0
    min_retry: float = 10.0
    max_retry: float = 60.0
    max_delivery_attempts: int = 100
    pending_window: float = 10.0  # Cloud Run: a request waits this long for a slot, then 429
    sigkill_after: float = 10.0
    cold_start: float = 30.0
    probe_period: float = 10.0  # liveness probe, 3 failures in a row restart the instance
    poll_seconds: float = 0.25  # GpuQueue's poll

    max_attempts: int = 3  # production: 5; fewer makes a spent budget reachable in a short run
    max_event_age: float = 1800.0  # production: 24 h; shorter makes expiry reachable

    def settings(self) -> Settings:
        return Settings(
            max_queued_jobs=self.concurrency,
            lease_seconds=180.0,
            max_attempts=self.max_attempts,
            max_event_age_seconds=self.max_event_age,
            progress_interval_seconds=3.0,
            max_job_seconds=1200.0,
            gpu_stall_seconds=300.0,
        )


@dataclass
class Message:
    id: str
    user: str
    session: str
    published: float
    duplicate_after_ack: bool = False
    deliveries: int = 0
    acked: bool = False
    dead: bool = False


@dataclass
class Request:
    """One thing the app asked for (create or re-queue); the document names it in ``request``."""

    id: int
    user: str
    session: str
    at: float
    ended_by_app: bool = False  # cancelled, superseded by a re-queue, or deleted


@dataclass
class Call:
    """One model call: which request, which job, and how it ended."""

    request: int
    job: str
    start: float
    end: float | None = None
    outcome: str = "running"  # done, stopped, crashed, hung


@dataclass
class Oracle:
    """What happened, for the invariants."""

    requests: dict[int, Request] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)  # session -> its current request
    deleted: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    completed: dict[int, str] = field(default_factory=dict)  # request -> job that recorded it
    turns: list[tuple[str, int]] = field(default_factory=list)  # (job, turns before its start)
    waits: list[tuple[str, float, bool]] = field(default_factory=list)  # (job, s, hang seen)
    charged: dict[int, int] = field(default_factory=dict)  # request -> faults it may own
    idle: list[tuple[str, float]] = field(default_factory=list)  # (instance, time)
    dead_letters: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    hangs: int = 0


class Job:
    """One acquired job's state shared with its heartbeat."""

    def __init__(self, name: str, claim: Any, request: int, started: float) -> None:
        self.name, self.claim, self.request, self.started = name, claim, request, started
        self.lost: str | None = None
        self.progress: float | None = None
        self.sent: float | None = None
        self.phase = Phase.INPUTS
        self.ticket: Ticket | None = None


class Instance:
    """One Cloud Run instance: the store, the GPU queue, its slots and its processes."""

    def __init__(self, world: World, name: str) -> None:
        self.world, self.name = world, name
        cfg, env = world.cfg, world.env
        self.store = SessionStore(
            world.settings,
            world.docs,
            world.blobs,
            instance=name,
            clock=world.now_dt,
            sleep=lambda _seconds: None,
        )
        self.queue = FairQueue()
        # The real job's end branches (not acquired, stopped, recorded) over this store.
        self.runner = JobRunner(world.settings, self.store, model=lambda: None)
        self.slots = 0
        self.ready_at = env.now + cfg.cold_start
        self.shutdown = False
        self.dead = False
        self.hang_next = False
        self.hung = False
        self.broken_probes = 0
        self.procs: dict[simpy.Process, None] = {}  # ordered: a kill interrupts in order
        self.changed = env.event()
        self.starts = 0
        env.process(self._probe())

    # --- the GPU queue's wake-ups (GpuQueue's condition variable) --------------------------
    def wake(self) -> None:
        event, self.changed = self.changed, self.world.env.event()
        event.succeed()
        self.world.env.process(self._idle_check())

    def _idle_check(self) -> Generator[Any, Any, None]:
        yield self.world.env.timeout(0.001)
        if self.dead or self.hung or self.shutdown:
            return  # on SIGTERM no job starts on the GPU: the waiting ones are redelivered
        waiting = self.queue.next_up()
        if waiting is not None and not any(t.running for t in self.queue.tickets):
            self.world.oracle.idle.append((self.name, self.world.env.now))

    def stalled(self) -> str | None:
        return stall_reason(
            self.queue.stalled_for(self.world.env.now), self.world.settings.gpu_stall_seconds
        )

    def routable(self) -> bool:
        return not self.dead and not self.shutdown and self.world.env.now >= self.ready_at

    # --- liveness: /health 503 three times -> Cloud Run restarts the instance ----------------
    def _probe(self) -> Generator[Any, Any, None]:
        env = self.world.env
        while not self.dead:
            yield env.timeout(self.world.cfg.probe_period)
            self.broken_probes = self.broken_probes + 1 if self.stalled() else 0
            if self.broken_probes >= 3 and not self.shutdown:
                self.world.sigterm(self)

    # --- one request --------------------------------------------------------------------------
    def handle(self, message: Message) -> Generator[Any, Any, int | None]:
        """The HTTP answer (None: the connection died with the instance)."""
        self.slots += 1
        try:
            return (yield from self._handle(message))
        except simpy.Interrupt:
            return None
        except Exception:
            return 500  # functions-framework answers an escaped exception with 500
        finally:
            self.slots -= 1

    def _handle(self, message: Message) -> Generator[Any, Any, int]:
        world = self.world
        if self.shutdown:
            return 500  # ShutdownError: no new job starts
        if self.stalled():
            return 500  # WARMUP.require: a broken instance takes no job
        try:
            ticket = self.queue.admit(message.user, world.settings.max_queued_jobs)
        except DeliverLaterError:
            return 503
        try:
            return (yield from self._admitted(message, ticket))
        finally:
            self.queue.leave(ticket)
            self.wake()

    def _io(self) -> simpy.Timeout:
        return self.world.env.timeout(self.world.cfg.io_seconds)

    def _admitted(self, message: Message, ticket: Ticket) -> Generator[Any, Any, int]:
        world = self.world
        env = world.env
        session = SessionRef(message.user, message.session)
        event_time = EPOCH + dt.timedelta(seconds=message.published)
        yield self._io()
        request = JobRequest(session, message.id, PUBSUB_TYPE, event_time)
        claim = self.store.claim(request)
        if claim.outcome is not ClaimOutcome.ACQUIRED:
            yield self._io()
            try:
                self.runner.not_acquired(request, claim)
            except DeliverLaterError:
                return 503
            return 200
        job = Job(f"{self.name}/{message.id}/{env.now:.3f}", claim, 0, env.now)
        job.request = int(claim.document.get("request", -1))
        job.ticket = ticket
        heartbeat = env.process(self._heartbeat(job))
        self.procs[heartbeat] = None
        try:
            return (yield from self._job(job, ticket))
        finally:
            if heartbeat.is_alive:
                heartbeat.interrupt("joined")
            self.procs.pop(heartbeat, None)
            self.store.end(claim)

    def _job(self, job: Job, ticket: Ticket) -> Generator[Any, Any, int]:
        world = self.world
        env, cfg, settings, oracle = world.env, world.cfg, world.settings, world.oracle
        claim = job.claim
        try:
            job_params(claim.document, claim.session.session_id, settings)
            yield env.timeout(cfg.download_seconds)
            yield self._io()
            self.store.load_inputs(claim.session)
            # 6. Wait for the GPU, the model call, the GPU to the next job.
            job.phase = Phase.QUEUE
            yield from self._wait_turn(job, ticket)
            job.phase = Phase.GPU
            yield from self._model_call(job, ticket)
            self.queue.release_gpu(ticket)
            self.wake()
            job.phase = Phase.OUTPUTS
            yield env.timeout(cfg.encode_seconds)
            if job.lost:
                raise LeaseLostError(job.lost)
            tag = f"{job.request}:{job.name}".encode()
            steps = write_outputs_steps(self.store, claim, b"edited:" + tag, b"preview:" + tag)
            written = yield from self._drive(steps)
            yield self._io()
            self.runner.record(claim, written, {"request": job.request})
            world.record_completion(job)
            return 200
        except simpy.Interrupt:
            # Killed: a crash while the job held its inputs, the GPU or its outputs may be its
            # own fault (a hostile file, a hung call); while waiting for the GPU it is not.
            if job.phase is not Phase.QUEUE:
                oracle.charged[job.request] = oracle.charged.get(job.request, 0) + 1
            raise
        except Exception as exc:
            # The oracle's own judgement (not ``spends_attempt``'s): a fault injected while the
            # job held its inputs, the GPU or its outputs; not a stop the platform caused.
            platform = ShutdownError | DeviceStalledError | OutputsRaceError
            if job.phase is not Phase.QUEUE and not isinstance(
                exc, platform | LeaseLostError | PermanentError
            ):
                oracle.charged[job.request] = oracle.charged.get(job.request, 0) + 1
            yield self._io()
            try:
                self.runner.stopped(claim, exc, job.phase)
            except TransientError:
                doc = world.docs.peek(claim.session.document_path) or {}
                expires = doc.get("leaseExpiresAt")
                if doc.get("leaseOwner") == claim.owner and expires and expires > world.now_dt():
                    # The release could not be written (Firestore unreachable): the lease runs
                    # out and the takeover cannot tell this stop from a crash, so it counts.
                    oracle.charged[job.request] = oracle.charged.get(job.request, 0) + 1
                return 500
            return 200

    def _drive(self, steps: Generator[str, None, Any]) -> Generator[Any, Any, Any]:
        """Runs a production step generator, letting the world act before each of its steps
        (an upload may be slow: ``World.slow_uploads``)."""
        while True:
            try:
                step = next(steps)
            except StopIteration as done:
                return done.value
            if step.startswith("upload") and self.world.slow_uploads:
                yield self.world.env.timeout(self.world.slow_uploads.pop(0))
            yield self._io()

    def _wait_turn(self, job: Job, ticket: Ticket) -> Generator[Any, Any, None]:
        env, oracle = self.world.env, self.world.oracle
        ticket.ready = True
        self.wake()
        ready_at, starts_at_ready = env.now, self.starts
        hang_seen = self.hung
        waited = False
        try:
            while self.queue.next_up() is not ticket:
                if not waited:  # the heartbeat thread's kicked write of queuePosition
                    waited = True
                    writer = env.process(self._write_position(job, self.queue.ahead_of(ticket)))
                    self.procs[writer] = None
                if job.lost:
                    raise LeaseLostError(job.lost)
                if self.shutdown:
                    raise ShutdownError("the instance is shutting down")
                stalled = self.stalled()
                if stalled:
                    raise DeviceStalledError(stalled)
                hang_seen = hang_seen or self.hung
                yield self.changed | env.timeout(self.world.cfg.poll_seconds)
        except BaseException:
            # Left without the GPU (stopped, lease lost, killed): no longer ready (as in
            # GpuQueue.wait_turn), and how long it waited counts too.
            ticket.ready = False
            self.wake()
            oracle.waits.append((job.name, env.now - ready_at, hang_seen or self.hung))
            raise
        self.queue.start(ticket, env.now)
        oracle.turns.append((job.name, self.starts - starts_at_ready))
        oracle.waits.append((job.name, env.now - ready_at, hang_seen or self.hung))
        self.starts += 1
        if waited:  # Heartbeat.left_queue: queuePosition cleared before the model call
            job.phase = Phase.GPU
            yield self._io()
            with contextlib.suppress(*TRANSIENT):
                self.store.heartbeat(job.claim, None, None)

    def _write_position(self, job: Job, position: int) -> Generator[Any, Any, None]:
        """The heartbeat thread's write of ``queuePosition`` (the waiting job does not wait
        for it)."""
        try:
            yield self._io()
            if not (job.ticket is not None and job.ticket.running):
                with contextlib.suppress(LeaseLostError, *TRANSIENT):
                    self.store.heartbeat(job.claim, None, position)
        except simpy.Interrupt:
            return

    def _model_call(self, job: Job, ticket: Ticket) -> Generator[Any, Any, None]:
        env, cfg, oracle = self.world.env, self.world.cfg, self.world.oracle
        call = Call(job.request, job.name, env.now)
        oracle.calls.append(call)
        self.world.check_call_start(call)
        try:
            if self.hang_next:
                self.hang_next, self.hung = False, True
                call.outcome = "hung"
                oracle.hangs += 1
                yield env.event()  # never returns: no step callback runs
            for step in range(1, cfg.steps + 1):
                yield env.timeout(cfg.step_seconds)
                self.queue.progress(ticket, env.now)  # the step callback
                if job.lost:
                    raise LeaseLostError(job.lost)
                if self.shutdown:
                    raise ShutdownError("the instance is shutting down")
                job.progress = step / cfg.steps * 0.95
            call.outcome = "done"
        except simpy.Interrupt:
            call.outcome = "hung" if call.outcome == "hung" else "crashed"
            raise
        except Exception:
            call.outcome = "stopped"
            raise
        finally:
            call.end = env.now

    def _heartbeat(self, job: Job) -> Generator[Any, Any, None]:
        env, settings = self.world.env, self.world.settings
        interval = heartbeat_interval(settings)
        deadline = env.now + settings.max_job_seconds
        try:
            while True:
                yield env.timeout(interval)
                holder = job.ticket is not None and job.ticket.running
                stalled = self.stalled() if holder else None
                tick = heartbeat_tick(env.now, deadline, stalled)
                if tick is Tick.OVERRUN:
                    job.lost = "overran"
                    self.wake()
                    return
                if tick is Tick.STALLED:
                    job.lost = f"the job's model call hung: {stalled}"
                    yield self._io()
                    with contextlib.suppress(Exception):
                        self.store.release(job.claim, job.lost, refund=False)
                    self.wake()
                    return
                progress = job.progress if job.progress != job.sent else None
                yield self._io()
                try:
                    self.store.heartbeat(job.claim, progress)
                    job.sent = job.progress if progress is not None else job.sent
                except LeaseLostError as exc:
                    job.lost = str(exc)
                    self.wake()
                    return
                except Exception:
                    pass  # the job goes on; the lease check at the end decides
        except simpy.Interrupt:
            return


class World:
    """The simulated platform around the real decision code."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        self.settings = self.cfg.settings()
        self.env = simpy.Environment()
        self.faults = Faults()
        self.docs = MemoryDocuments(self.now_dt, self.faults)
        self.blobs = MemoryBlobs(self.faults)
        self.oracle = Oracle()
        self.messages: list[Message] = []
        self.instances: list[Instance] = []
        self._names = itertools.count(1)
        self._ids = itertools.count(1)
        self.last_job_at: dict[str, float] = {}
        self.slow_uploads: list[float] = []
        for _ in range(self.cfg.instances):
            self._start_instance(warm=True)

    def now_dt(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.env.now)

    # --- the platform -----------------------------------------------------------------------
    def _start_instance(self, warm: bool = False) -> Instance:
        instance = Instance(self, f"i{next(self._names)}")
        if warm:
            instance.ready_at = self.env.now
        self.instances.append(instance)
        return instance

    def publish(self, user: str, session: str) -> Message:
        message = Message(f"m{next(self._ids)}", user, session, self.env.now)
        self.messages.append(message)
        self.env.process(self._subscription(message))
        return message

    def _subscription(self, message: Message) -> Generator[Any, Any, None]:
        """Pub/Sub push: redeliver until acknowledged; exponential backoff; dead letters."""
        env, cfg = self.env, self.cfg
        while True:
            message.deliveries += 1
            push = env.process(self._front(message))
            outcome = yield push | env.timeout(cfg.ack_deadline)
            code = outcome[push] if push in outcome else None  # noqa: SIM401 (simpy)
            if code in ACKNOWLEDGING:
                message.acked = True
                if not message.duplicate_after_ack:
                    return
                message.duplicate_after_ack = False  # at-least-once: once more, later
                yield env.timeout(cfg.min_retry)
                continue
            if message.deliveries >= cfg.max_delivery_attempts:
                message.dead = True
                self.oracle.dead_letters.append(message.id)
                return
            retries = message.deliveries - 1
            yield env.timeout(min(cfg.max_retry, cfg.min_retry * 2**retries))

    def _front(self, message: Message) -> Generator[Any, Any, int | None]:
        """Cloud Run's front: a free slot on a routable instance, else 429 after 10 s."""
        env, cfg = self.env, self.cfg
        waited = 0.0
        while True:
            free = [i for i in self.instances if i.routable() and i.slots < self.cfg.concurrency]
            if free:
                instance = min(free, key=lambda i: (i.slots, i.name))
                break
            if waited >= cfg.pending_window:
                return 429
            yield env.timeout(1.0)
            waited += 1.0
        proc = env.process(instance.handle(message))
        instance.procs[proc] = None
        try:
            return (yield proc)
        finally:
            instance.procs.pop(proc, None)

    def sigterm(self, instance: Instance) -> None:
        """Cloud Run stops an instance: SIGTERM, SIGKILL 10 s later, a replacement starts."""
        if instance.shutdown or instance.dead:
            return
        instance.shutdown = True
        self._start_instance()

        def kill_later() -> Generator[Any, Any, None]:
            yield self.env.timeout(self.cfg.sigkill_after)
            self.kill(instance, replace=False)

        self.env.process(kill_later())

    def kill(self, instance: Instance, replace: bool = True) -> None:
        """SIGKILL: every process of the instance stops where it is."""
        if instance.dead:
            return
        instance.dead = True
        for proc in list(instance.procs):
            if proc.is_alive:
                proc.interrupt("killed")
        if replace and not instance.shutdown:
            self._start_instance()

    # --- the app (what the security rules allow) -------------------------------------------
    def may_queue(self, user: str) -> bool:
        """The rules: one new or re-queued job per user per 30 s."""
        last = self.last_job_at.get(user)
        return last is None or self.env.now > last + 30.0

    def create(self, user: str) -> str | None:
        if not self.may_queue(user):
            return None
        session = f"s{next(self._ids)}"
        base = f"users/{user}/sessions/{session}"
        self.blobs.put(f"{base}/{PHOTO}", b"photo")
        self.blobs.put(f"{base}/{MASK}", b"mask")
        self._new_request(user, session)
        return session

    def _new_request(self, user: str, session: str) -> None:
        request = Request(next(self._ids), user, session, self.env.now)
        previous = self.oracle.current.get(session)
        if previous is not None:
            self.oracle.requests[previous].ended_by_app = True
        self.oracle.requests[request.id] = request
        self.oracle.current[session] = request.id
        self.last_job_at[user] = self.env.now
        path = f"users/{user}/sessions/{session}"
        fields = {"processingStatus": "queued", "requestedAt": self.now_dt(), "request": request.id}
        if previous is None:
            self.docs.set(path, fields)
        else:
            self.docs.patch(path, fields)
        self.publish(user, session)

    def _session(self, pick: int) -> tuple[str, str] | None:
        live = [
            (r.user, r.session)
            for r in self.oracle.requests.values()
            if r.session not in self.oracle.deleted and self.oracle.current[r.session] == r.id
        ]
        return live[pick % len(live)] if live else None

    def status(self, user: str, session: str) -> str | None:
        doc = self.docs.peek(f"users/{user}/sessions/{session}")
        return doc.get("processingStatus") if doc else None

    def cancel(self, pick: int) -> None:
        found = self._session(pick)
        if found and self.status(*found) in ("queued", "processing"):
            user, session = found
            self.docs.patch(f"users/{user}/sessions/{session}", {"processingStatus": "cancelled"})
            self.oracle.requests[self.oracle.current[session]].ended_by_app = True

    def requeue(self, pick: int) -> None:
        found = self._session(pick)
        finished = found and self.status(*found) in ("completed", "failed", "cancelled")
        if found and finished and self.may_queue(found[0]):
            self._new_request(*found)

    def delete(self, pick: int) -> None:
        found = self._session(pick)
        if found:
            user, session = found
            self.docs.delete(f"users/{user}/sessions/{session}")
            self.blobs.remove_prefix(f"users/{user}/sessions/{session}/")
            self.oracle.deleted.add(session)
            self.oracle.requests[self.oracle.current[session]].ended_by_app = True

    def reedit(self, pick: int) -> None:
        """The user edits again: cancels the running job if there is one, then re-queues."""
        self.cancel(pick)
        self.requeue(pick)

    def eager(self, user: str, jobs: int) -> None:
        """An active user: a new session as soon as the last one ended (and the rules allow)."""

        def run() -> Generator[Any, Any, None]:
            for _ in range(jobs):
                while not self.may_queue(user):
                    yield self.env.timeout(1.0)
                session = self.create(user)
                while session and self.status(user, session) in ("queued", "processing"):
                    yield self.env.timeout(1.0)

        self.env.process(run())

    def republish(self, pick: int) -> None:
        """The publisher's own retry: the same data under a new message ID."""
        found = self._session(pick)
        if found:
            self.publish(*found)

    def redeliver(self, pick: int) -> None:
        """Pub/Sub delivers an acknowledged message again (at-least-once), now: a copy as old
        as the message."""
        acked = [m for m in self.messages if m.acked and not m.dead]
        if acked:
            message = acked[pick % len(acked)]
            message.acked = False
            self.env.process(self._subscription(message))

    def slow_upload(self, seconds: float) -> None:
        self.slow_uploads.append(seconds)

    def duplicate_after_ack(self, pick: int) -> None:
        pending = [m for m in self.messages if not m.acked and not m.dead]
        if pending:
            pending[pick % len(pending)].duplicate_after_ack = True

    # --- faults -----------------------------------------------------------------------------
    def live_instances(self) -> list[Instance]:
        return [i for i in self.instances if not i.dead]

    def crash(self, pick: int) -> None:
        live = self.live_instances()
        if live:
            self.kill(live[pick % len(live)])

    def stop(self, pick: int) -> None:
        live = [i for i in self.live_instances() if not i.shutdown]
        if live:
            self.sigterm(live[pick % len(live)])

    def hang(self, pick: int) -> None:
        live = self.live_instances()
        if live:
            live[pick % len(live)].hang_next = True

    # --- time -------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.env.run(until=self.env.now + seconds)
        self.check_safety()

    def settle(self, limit: float = 3 * 86400.0) -> None:
        """Runs until every message is acknowledged or dead-lettered and no job runs."""
        end = self.env.now + limit
        while self.env.now < end:
            self.env.run(until=self.env.now + 60.0)
            self.check_safety()
            busy = any(i.slots for i in self.live_instances())
            if not busy and all(m.acked or m.dead for m in self.messages):
                pending = [m for m in self.messages if m.duplicate_after_ack]
                if not pending:
                    return

    # --- invariants -------------------------------------------------------------------------
    def record_completion(self, job: Job) -> None:
        self.oracle.completed.setdefault(job.request, job.name)

    def check_call_start(self, call: Call) -> None:
        """No request's model call runs twice at once (unless the first hung), and none runs
        again once the request was recorded completed."""
        for other in self.oracle.calls:
            if other is call or other.request != call.request:
                continue
            if other.end is None and other.outcome != "hung":
                self.oracle.violations.append(
                    f"request {call.request}: model call {call.job} started while "
                    f"{other.job} was still running"
                )
        if call.request in self.oracle.completed:
            self.oracle.violations.append(
                f"request {call.request}: model call {call.job} started after the request "
                "was completed"
            )

    def check_safety(self) -> None:
        """What must hold at every moment."""
        oracle = self.oracle
        for session in oracle.deleted:
            request = oracle.requests[oracle.current[session]]
            if self.docs.peek(f"users/{request.user}/sessions/{session}") is not None:
                oracle.violations.append(f"deleted session {session} has a document again")
        for session, request_id in oracle.current.items():
            request = oracle.requests[request_id]
            path = f"users/{request.user}/sessions/{session}"
            doc = self.docs.peek(path)
            if not doc or doc.get("processingStatus") != "completed":
                continue
            files = self.blobs.listing(path + "/")
            done_by = oracle.completed.get(doc["request"])
            for name, kind in (("edited.jpg", b"edited"), ("preview.jpg", b"preview")):
                expected = kind + b":" + f"{doc['request']}:{done_by}".encode()
                if files.get(f"{path}/{name}") != expected:
                    oracle.violations.append(
                        f"session {session} completed request {doc['request']} by {done_by} "
                        f"but {name} holds {files.get(f'{path}/{name}')!r}"
                    )
        bound = turn_bound(self.cfg.concurrency)
        for job, turns in oracle.turns:
            if turns > bound:
                oracle.violations.append(f"{job} waited {turns} turns (bound {bound})")
        oracle.turns.clear()
        for instance, at in oracle.idle:
            oracle.violations.append(f"{instance}: the GPU idled at {at:.3f} with a job ready")
        oracle.idle.clear()

    def check_settled(self) -> None:
        """What must hold once nothing is left to happen."""
        oracle = self.oracle
        for message in self.messages:
            if message.dead:
                oracle.violations.append(f"message {message.id} was dead-lettered")
        for request in oracle.requests.values():
            if request.ended_by_app:
                continue
            path = f"users/{request.user}/sessions/{request.session}"
            doc = self.docs.peek(path) or {}
            status = doc.get("processingStatus")
            if status not in ("completed", "failed"):
                oracle.violations.append(f"request {request.id} ended {status!r}: {doc}")
            elif status == "failed" and not doc.get("errorMessage"):
                oracle.violations.append(f"request {request.id} failed without a reason")
            elif doc.get("errorCode") == "expired":
                failed_at = (doc["failedAt"] - EPOCH).total_seconds()
                if failed_at - request.at <= self.settings.max_event_age_seconds:
                    oracle.violations.append(
                        f"request {request.id} failed as expired {failed_at - request.at:.0f} s "
                        "after it was made"
                    )
            elif doc.get("errorCode") == "attempts_exhausted":
                charged = oracle.charged.get(request.id, 0)
                if charged < self.settings.max_attempts:
                    oracle.violations.append(
                        f"request {request.id} failed as attempts exhausted with only "
                        f"{charged} faults it could own: {doc.get('lastError')}"
                    )
        for session in oracle.deleted:
            request = oracle.requests[oracle.current[session]]
            left = self.blobs.listing(f"users/{request.user}/sessions/{session}/")
            if left:
                oracle.violations.append(f"deleted session {session} has files: {sorted(left)}")
        for job, waited, _hang_seen in oracle.waits:
            if waited > self.cfg.ack_deadline:
                oracle.violations.append(f"{job} waited {waited:.0f} s for the GPU")
