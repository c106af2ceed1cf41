"""``python -m penguiflow.redis worker MODULE:ATTR --url redis://HOST:PORT/DB``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ._keys import DEFAULT_PREFIX
from ._serve import load_target, serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m penguiflow.redis",
        description="Serve a PenguiFlow flow's requests from Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="run a worker until SIGTERM or SIGINT",
        description=(
            "Run a worker: it takes requests from the flow's Redis stream, runs each through "
            "the flow in this process and writes the outcome back. With --nodes it runs "
            "only those nodes and sends items for the others to their Redis streams. "
            "SIGTERM or SIGINT stop it: it takes no new work, lets in-flight work finish "
            "for --grace seconds and hands the rest back to the streams."
        ),
    )
    worker.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a PenguiFlow, or a zero-argument callable returning one or (flow, registry)",
    )
    worker.add_argument("--url", required=True, help="redis://HOST:PORT/DB")
    worker.add_argument("--prefix", default=DEFAULT_PREFIX, help="the flow's key prefix")
    worker.add_argument("--concurrency", type=int, default=32, help="requests run at once")
    worker.add_argument(
        "--claim-idle",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="take over requests left untouched this long by a dead worker",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take before they are handed back",
    )
    worker.add_argument("--name", default=None, help="this worker's consumer name")
    worker.add_argument(
        "--nodes",
        default=None,
        metavar="A,B",
        help="serve only these nodes (all by default); items for the others go to Redis",
    )
    worker.add_argument(
        "--max-deliveries",
        type=int,
        default=5,
        metavar="N",
        help="after N deliveries that each stopped their worker, dead-letter the entry",
    )
    worker.add_argument(
        "--stream-maxlen",
        type=int,
        default=1000,
        metavar="N",
        help="with --nodes: entries a node's stream holds before senders wait",
    )
    return parser


async def _worker(args: argparse.Namespace) -> None:
    flow, registry = load_target(args.target)
    nodes = None
    if args.nodes is not None:
        nodes = [name.strip() for name in args.nodes.split(",") if name.strip()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    what = args.target if nodes is None else f"{args.target} (nodes {', '.join(nodes)})"
    print(f"penguiflow.redis worker serving {what} on {args.url}", file=sys.stderr)
    await serve(
        flow,
        args.url,
        registry=registry,
        prefix=args.prefix,
        concurrency=args.concurrency,
        claim_idle_s=args.claim_idle,
        grace_s=args.grace,
        name=args.name,
        stop=stop,
        nodes=nodes,
        max_deliveries=args.max_deliveries,
        stream_maxlen=args.stream_maxlen,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    # Warnings and up from the flow (its INFO events are built only when someone listens,
    # and they cost time on every message); this package's own notes at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("penguiflow.redis").setLevel(logging.INFO)
    try:
        asyncio.run(_worker(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
