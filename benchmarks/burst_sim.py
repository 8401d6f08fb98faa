"""A discrete-event simulation (simpy) of a burst of jobs through production's delivery path.

Pub/Sub push -> Cloud Run's front -> instances with ``concurrency`` request slots and one GPU
each. The rules are the documented ones; where the documentation gives no number, the constant
is an assumption, named in ``Rules`` and printed with every run:

- Cloud Run: with every slot of the last allowed instance busy, a request waits up to
  ``pending_s`` (~10 s, documented) for a slot, then is answered 429.
- Pub/Sub push: a non-2xx answer (429 included) is a failed delivery attempt: the message is
  retried after its own exponential delay (``min_retry_s`` doubling up to ``max_retry_s``, the
  subscription's retry policy) and counts toward ``max_delivery_attempts`` (then dead-lettered).
  After failures the whole subscription pauses (push backoff, 100 ms doubling to 60 s: the
  documented range; doubling per consecutive failure is assumed). The number of outstanding
  pushes (window) starts at ``window_start`` (assumed), grows by one per success and halves
  per failure (assumed). An answer later than ``ack_deadline_s`` is a failed attempt too
  (counted as ``late``: the job would then be delivered again while it runs).
- Instances: all ``instances`` are warm at the start (no cold start modelled); each runs its
  admitted jobs one at a time on its GPU in arrival order; a job holds the GPU for its job
  time, drawn uniformly from ``job_s`` (seeded: the same inputs give the same figures).

Run: ``.venv/bin/python -m benchmarks.burst_sim`` (the sweep behind the deployment settings in
docs/delivery.md) or with ``--help`` for one scenario.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
from dataclasses import asdict, dataclass, field, replace

import simpy

# L4 job times, estimated (no L4 has run this service yet): ~2 s per step at 1 MP with the GGUF
# transformer (docs/delivery.md: the compute bound at about half the L4's spec), so 28 steps
# ~55-60 s; smaller crops and the FP8/step-cache profiles are faster. The longest job the
# settings allow is INPAINT_MAX_STEPS = 50 steps plus decoding, VAE and upload.
L4_JOB_S: tuple[tuple[float, float], ...] = ((20.0, 20.0), (30.0, 30.0), (60.0, 60.0), (20.0, 60.0))
L4_LONGEST_JOB_S = 110.0
# The burst one instance is said to absorb at the deployed settings (docs/delivery.md).
SUPPORTED_BURST_PER_INSTANCE = 200


@dataclass(frozen=True)
class Rules:
    """Documented rules and assumed constants (see the module docstring)."""

    pending_s: float = 10.0
    min_retry_s: float = 10.0
    max_retry_s: float = 600.0
    max_delivery_attempts: int = 100
    ack_deadline_s: float = 600.0
    push_backoff_min_s: float = 0.1
    push_backoff_max_s: float = 60.0
    window_start: int = 8
    window_min: int = 1
    window_max: int = 1000


@dataclass(frozen=True)
class Scenario:
    jobs: int
    concurrency: int
    instances: int = 1
    job_s: tuple[float, float] = (30.0, 30.0)
    rules: Rules = field(default_factory=Rules)
    seed: int = 1


@dataclass
class SimReport:
    jobs: int
    concurrency: int
    instances: int
    job_s: tuple[float, float]
    max_retry_s: float
    window_min: int
    makespan_s: float
    ideal_s: float
    ratio: float
    gpu_busy: float
    wait_p50_s: float
    wait_p95_s: float
    answers_429: int
    dead_lettered: int
    late: int
    max_attempts: int


@dataclass
class _Message:
    index: int
    job_s: float
    attempts: int = 0
    next_at: float = 0.0
    in_flight: bool = False
    done: bool = False
    started_at: float | None = None


def simulate(scenario: Scenario) -> SimReport:
    """Runs one burst to its end (every message acknowledged or dead-lettered)."""
    rules = scenario.rules
    rng = random.Random(scenario.seed)
    env = simpy.Environment()
    messages = [_Message(i, rng.uniform(*scenario.job_s)) for i in range(scenario.jobs)]
    slots = simpy.Store(env)
    for instance, _ in itertools.product(range(scenario.instances), range(scenario.concurrency)):
        slots.put(instance)
    gpus = [simpy.Resource(env, capacity=1) for _ in range(scenario.instances)]
    state = {"window": rules.window_start, "out": 0, "fails": 0, "pause_until": 0.0}
    counts = {"429": 0, "dead": 0, "late": 0}
    wake = [env.event()]

    def poke() -> None:
        if not wake[0].triggered:
            wake[0].succeed()

    def failed(message: _Message) -> None:
        message.attempts += 1
        state["fails"] += 1
        state["window"] = max(rules.window_min, state["window"] // 2)
        backoff = rules.push_backoff_min_s * 2 ** (state["fails"] - 1)
        state["pause_until"] = env.now + min(rules.push_backoff_max_s, backoff)
        if message.attempts >= rules.max_delivery_attempts:
            message.done = True
            counts["dead"] += 1
            return
        delay = rules.min_retry_s * 2 ** (message.attempts - 1)
        message.next_at = env.now + min(rules.max_retry_s, delay)

    def push(message: _Message) -> simpy.events.ProcessGenerator:
        sent = env.now
        get = slots.get()
        yield get | env.timeout(rules.pending_s)
        if not get.triggered:  # a slot freed at the very moment of the timeout is still taken
            get.cancel()
            counts["429"] += 1
            failed(message)
        else:
            instance = get.value
            with gpus[instance].request() as turn:
                yield turn
                if message.started_at is None:
                    message.started_at = env.now
                yield env.timeout(message.job_s)
            slots.put(instance)
            if env.now - sent > rules.ack_deadline_s:
                counts["late"] += 1
            message.attempts += 1
            message.done = True
            state["fails"] = 0
            state["window"] = min(rules.window_max, state["window"] + 1)
        message.in_flight = False
        state["out"] -= 1
        poke()

    def dispatcher() -> simpy.events.ProcessGenerator:
        while not all(m.done for m in messages):
            now = env.now
            if now < state["pause_until"]:
                yield env.timeout(state["pause_until"] - now)
                continue
            eligible = [m for m in messages if not m.done and not m.in_flight and m.next_at <= now]
            if eligible and state["out"] < state["window"]:
                message = eligible[0]
                message.in_flight = True
                state["out"] += 1
                env.process(push(message))
                continue
            waiting = [m.next_at for m in messages if not m.done and not m.in_flight]
            wake[0] = env.event()
            timers = [wake[0]]
            if waiting and state["out"] < state["window"]:
                timers.append(env.timeout(max(0.0, min(waiting) - now)))
            yield simpy.AnyOf(env, timers)

    env.process(dispatcher())
    env.run()
    makespan = env.now
    busy = sum(m.job_s for m in messages if m.started_at is not None)
    ideal = busy / scenario.instances
    waits = sorted(m.started_at for m in messages if m.started_at is not None)
    return SimReport(
        jobs=scenario.jobs,
        concurrency=scenario.concurrency,
        instances=scenario.instances,
        job_s=scenario.job_s,
        max_retry_s=rules.max_retry_s,
        window_min=rules.window_min,
        makespan_s=round(makespan, 1),
        ideal_s=round(ideal, 1),
        ratio=round(makespan / ideal, 3) if ideal else 0.0,
        gpu_busy=round(busy / (scenario.instances * makespan), 3) if makespan else 0.0,
        wait_p50_s=round(statistics.median(waits), 1) if waits else 0.0,
        wait_p95_s=round(waits[max(0, round(0.95 * len(waits)) - 1)], 1) if waits else 0.0,
        answers_429=counts["429"],
        dead_lettered=counts["dead"],
        late=counts["late"],
        max_attempts=max(m.attempts for m in messages),
    )


def sweep(
    jobs: tuple[int, ...] = (20, 50, 100, 200),
    concurrency: tuple[int, ...] = (1, 2, 4, 6, 8),
    instances: tuple[int, ...] = (1, 2, 3),
    job_s: tuple[tuple[float, float], ...] = L4_JOB_S,
    max_retry_s: tuple[float, ...] = (600.0, 60.0),
    window_min: tuple[int, ...] = (1, 10),
) -> list[SimReport]:
    """Every combination (a few seconds in all)."""
    return [
        simulate(Scenario(n, c, i, t, replace(Rules(), max_retry_s=r, window_min=w)))
        for n, c, i, t, r, w in itertools.product(
            jobs, concurrency, instances, job_s, max_retry_s, window_min
        )
    ]


HEADER = (
    "jobs  C  inst  job s     max retry  win min  makespan  ideal   ratio  GPU busy"
    "  wait p50  wait p95   429s  dead  late  max att."
)


def line(r: SimReport) -> str:
    job = f"{r.job_s[0]:.0f}-{r.job_s[1]:.0f}" if r.job_s[0] != r.job_s[1] else f"{r.job_s[0]:.0f}"
    return (
        f"{r.jobs:4d} {r.concurrency:2d} {r.instances:5d}  {job:8s} {r.max_retry_s:8.0f} s"
        f" {r.window_min:8d} {r.makespan_s:8.0f} {r.ideal_s:7.0f} {r.ratio:7.2f} {r.gpu_busy:8.0%}"
        f" {r.wait_p50_s:9.0f} {r.wait_p95_s:9.0f} {r.answers_429:6d} {r.dead_lettered:5d}"
        f" {r.late:5d} {r.max_attempts:9d}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--job-seconds", type=float, nargs=2, action="append", default=None)
    parser.add_argument("--max-retry", type=float, nargs="+", default=[600.0, 60.0])
    parser.add_argument("--window-min", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = parser.parse_args(argv)
    job_s = tuple(tuple(x) for x in args.job_seconds) if args.job_seconds else None
    reports = sweep(
        tuple(args.jobs),
        tuple(args.concurrency),
        tuple(args.instances),
        job_s or L4_JOB_S,
        tuple(args.max_retry),
        tuple(args.window_min),
    )
    print(f"# rules: {asdict(Rules())}")
    print(HEADER)
    for report in reports:
        print(json.dumps(asdict(report)) if args.json else line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
