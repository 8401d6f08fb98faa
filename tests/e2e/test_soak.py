"""A short soak (benchmarks/soak.py, 20 jobs): Pub/Sub push into one server process, then no job
lost, none duplicated. The full run (200 jobs, latency and memory figures) is the script's."""

from __future__ import annotations

from benchmarks.soak import run_soak


def test_twenty_jobs_through_pubsub_all_complete_once(shared_server, stack, sessions):
    report = run_soak(stack, shared_server, sessions.db, sessions.bucket, 20, warmup_jobs=3)
    print("\n".join(report.lines()))
    assert (report.jobs, report.completed, report.lost) == (20, 20, 0)
    assert report.failed == 0 and report.duplicated == 0
    assert report.latency_median_s is not None and report.latency_median_s > 0
    # Reported, only loosely bounded: a leak of this size would show in 20 jobs.
    assert report.rss_end_mib < 1.5 * report.rss_start_mib
