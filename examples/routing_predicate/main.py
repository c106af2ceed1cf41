"""Route requests with ``predicate_router``: on headers, on payload, or to several nodes.

Run: ``python examples/routing_predicate/main.py``
"""

from __future__ import annotations

import asyncio

from penguiflow import Headers, Message, Node, create
from penguiflow.patterns import predicate_router


def choose(msg: Message) -> str | list[str] | None:
    """A pure function of the message: header first, then payload, urgent goes twice."""
    if msg.headers.topic == "spam":
        return None  # dropped
    target = "metrics" if "metric" in msg.payload else "general"
    if msg.headers.priority > 5:
        return [target, "audit"]  # fan out to several successors, in order
    return target


async def metrics(msg: Message, ctx: object) -> str:
    return f"metrics  <- {msg.payload!r}"


async def general(msg: Message, ctx: object) -> str:
    return f"general  <- {msg.payload!r}"


async def audit(msg: Message, ctx: object) -> str:
    return f"audit    <- {msg.payload!r} (priority {msg.headers.priority})"


async def main() -> list[str]:
    router = predicate_router("triage", choose)
    metrics_node = Node(metrics, name="metrics")
    general_node = Node(general, name="general")
    audit_node = Node(audit, name="audit")
    flow = create(router.to(metrics_node, general_node, audit_node))
    flow.run()
    try:
        requests = [
            Message(payload="unique reach metric", headers=Headers(tenant="acme")),
            Message(payload="hello there", headers=Headers(tenant="acme")),
            Message(payload="buy now", headers=Headers(tenant="acme", topic="spam")),
            Message(payload="metric outage!", headers=Headers(tenant="acme", priority=9)),
        ]
        for request in requests:
            await flow.emit(request)
        # 1 + 1 + 0 (spam is dropped) + 2 (urgent goes to metrics and audit)
        lines = sorted([await flow.fetch() for _ in range(4)])
    finally:
        await flow.stop()
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    asyncio.run(main())
