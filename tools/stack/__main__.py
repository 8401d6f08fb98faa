"""``python -m tools.stack up``: start the local services, print exports, run until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from tools.stack.local import LocalStack
from tools.stack.servers import SERVICES, StackError

# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    stack = LocalStack(
        project=args.project,
        bucket=args.bucket,
        workdir=Path(args.workdir) if args.workdir else None,
        services=services,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        exports = stack.exports()
        if args.env_file:
            Path(args.env_file).write_text(exports)
        sys.stdout.write(exports)
        timings = ", ".join(f"{k}={v:.2f}" for k, v in sorted(stack.timings.items()))
        print(f"# logs in {stack.workdir}; {timings}", file=sys.stderr)
        print("ready", flush=True)
        while not stopping.wait(1.0):
            if not stack.running:
                print(f"error: server(s) exited: {stack.exited()}", file=sys.stderr)
                return 1
        return 0
    finally:
        stack.stop()
        print("stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description="Local Firestore, Cloud Storage and Pub/Sub."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything, print exports, run until SIGINT/SIGTERM")
    up.add_argument("--project", default="demo-inpaint")
    up.add_argument("--bucket", default=None, help="default: PROJECT.firebasestorage.app")
    up.add_argument("--env-file", default=None, help="also write the export lines here")
    up.add_argument("--workdir", default=None, help="logs and data (default: a temp dir)")
    up.add_argument("--services", default=",".join(SERVICES))
    args = parser.parse_args(argv)
    try:
        return _cmd_up(args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
