"""Timeouts, retries and backoff, watched through a one-argument ``FlowEvent`` middleware.

One node calls a flaky mock service under
``NodePolicy(timeout_s=..., max_retries=2, backoff_base=..., backoff_mult=2, max_backoff=...)``:

* ``flaky``  - the first attempt raises, the retry succeeds;
* ``slow``   - the first attempt hangs and is cut by the timeout, the retry succeeds;
* ``broken`` - every attempt raises: after 1 + max_retries attempts the item is dropped
  with ``node_failed``, and the flow keeps serving everyone else.

Every attempt receives the same message object, so the node counts its attempts in
``msg.meta``. The timings are tiny (milliseconds) to keep the demo instant.

Run it with::

    python examples/reliability_middleware/main.py
"""

from __future__ import annotations

import asyncio

from penguiflow import Context, FlowEvent, Headers, Message, Node, NodePolicy, create

POLICY = NodePolicy(
    validate="none",
    timeout_s=0.01,  # limit of ONE attempt
    max_retries=2,  # up to 3 attempts in total
    backoff_base=0.001,  # sleep before retry n: base * mult ** (n - 1) ...
    backoff_mult=2.0,
    max_backoff=0.002,  # ... capped here
)
SHOWN = {"node_start", "node_error", "node_retry", "node_success", "node_timeout", "node_failed"}


class EventLog:
    """A middleware: any async callable taking ONE positional FlowEvent."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}  # trace_id -> readable name
        self.seen: list[tuple[str, str, int]] = []  # (label, event, attempt)
        self.failed = asyncio.Event()

    async def __call__(self, event: FlowEvent) -> None:
        if event.event_type not in SHOWN or event.trace_id is None:
            return
        label = self.labels.get(event.trace_id, event.trace_id)
        self.seen.append((label, event.event_type, event.attempt))
        details = ""
        if event.latency_ms is not None and event.event_type != "node_start":
            details += f" latency={event.latency_ms:.1f}ms"
        if "sleep_s" in event.extra:
            details += f" sleep_s={event.extra['sleep_s']}"
        if "exception" in event.extra:
            details += f" exception={event.extra['exception']}"
        print(f"  {label:<6} {event.event_type:<12} attempt={event.attempt}{details}")
        if event.event_type == "node_failed":
            self.failed.set()


async def call_service(msg: Message, _ctx: Context) -> Message:
    attempt = msg.meta["attempts"] = msg.meta.get("attempts", 0) + 1
    mode = msg.payload
    if mode == "broken" or (mode == "flaky" and attempt == 1):
        raise ConnectionError(f"service unavailable ({mode})")
    if mode == "slow" and attempt == 1:
        await asyncio.Event().wait()  # hangs until the timeout cancels this attempt
    return msg.model_copy(update={"payload": f"{mode}: ok after {attempt} attempts"})


async def main() -> tuple[list[str], EventLog]:
    """Send the three requests; return the results that reached Rookery and the log."""
    log = EventLog()
    node = Node(call_service, name="service", policy=POLICY)
    flow = create(node.to(), middlewares=[log])
    flow.run()

    results: list[str] = []
    try:
        for mode in ("flaky", "slow", "broken"):
            msg = Message(payload=mode, headers=Headers(tenant="acme"))
            log.labels[msg.trace_id] = mode
            await flow.emit(msg)
        results.append((await flow.fetch()).payload)
        results.append((await flow.fetch()).payload)
        await log.failed.wait()  # "broken" never reaches Rookery: it is dropped
    finally:
        await flow.stop()
    for result in results:
        print(f"result: {result}")
    return results, log


if __name__ == "__main__":
    asyncio.run(main())
