"""``NodePolicy`` and ``Node``: construction, identity and ``invoke``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import penguiflow.node as node_mod
from penguiflow.core import Context
from penguiflow.node import Node, NodePolicy, ValidateMode
from penguiflow.registry import ModelRegistry
from penguiflow.types import Headers, Message


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


async def double(msg: Any, ctx: Context) -> Any:
    return {"y": msg.x * 2}


def test_module_all() -> None:
    assert node_mod.__all__ == ["Node", "NodeFunc", "NodePolicy", "ValidateMode"]


# -- NodePolicy -------------------------------------------------------------------------


def test_policy_defaults() -> None:
    p = NodePolicy()
    assert (p.validate, p.timeout_s, p.max_retries) == ("both", None, 0)
    assert (p.backoff_base, p.backoff_mult, p.max_backoff) == (0.5, 2.0, None)
    assert p.max_concurrency == 1


def test_policy_positional_order() -> None:
    p = NodePolicy("in", 1.5, 3, 0.1, 3.0, 9.0, 4)
    assert (p.validate, p.timeout_s, p.max_retries) == ("in", 1.5, 3)
    assert (p.backoff_base, p.backoff_mult, p.max_backoff, p.max_concurrency) == (0.1, 3.0, 9.0, 4)
    assert [f.name for f in dataclasses.fields(NodePolicy)] == [
        "validate",
        "timeout_s",
        "max_retries",
        "backoff_base",
        "backoff_mult",
        "max_backoff",
        "max_concurrency",
        "retry_on",
        "jitter",
    ]


def test_policy_is_a_slotted_dataclass() -> None:
    assert dataclasses.is_dataclass(NodePolicy)
    assert not hasattr(NodePolicy(), "__dict__")


@pytest.mark.parametrize("mode", ["both", "in", "out", "none"])
def test_policy_accepts_every_validate_mode(mode: ValidateMode) -> None:
    assert NodePolicy(validate=mode).validate == mode


@pytest.mark.parametrize("mode", ["", "BOTH", "input", None])
def test_policy_rejects_unknown_validate_mode(mode: Any) -> None:
    with pytest.raises(
        ValueError, match=re.escape("validate must be one of 'both', 'in', 'out', 'none'")
    ):
        NodePolicy(validate=mode)


# -- Node construction ------------------------------------------------------------------


def test_node_defaults_and_attributes() -> None:
    n = Node(double)
    assert n.func is double
    assert n.name == "double"
    assert n.policy == NodePolicy()
    assert n.allow_cycle is False
    assert re.fullmatch(r"[0-9a-f]{32}", n.node_id)


def test_node_positional_order() -> None:
    pol = NodePolicy(validate="none")
    n = Node(double, "dbl", pol, True)
    assert (n.name, n.policy, n.allow_cycle) == ("dbl", pol, True)


def test_node_is_a_slotted_dataclass_without_node_id_argument() -> None:
    assert dataclasses.is_dataclass(Node)
    assert not hasattr(Node(double), "__dict__")
    with pytest.raises(TypeError):
        Node(double, node_id="x")  # type: ignore[call-arg]


def test_node_rejects_sync_functions_and_lambdas() -> None:
    def sync(msg: Any, ctx: Context) -> Any:
        return msg

    class CallableObj:
        def __call__(self, msg: Any, ctx: Context) -> Any:
            return msg

    for func in (sync, lambda m, c: m, CallableObj(), print):
        with pytest.raises(TypeError, match="Node function must be declared with async def"):
            Node(func)  # type: ignore[arg-type]


def test_async_check_comes_before_the_arity_check() -> None:
    def sync_one(msg: Any) -> Any:
        return msg

    with pytest.raises(TypeError, match="async def"):
        Node(sync_one)  # type: ignore[arg-type]


@pytest.mark.parametrize("arity", [0, 1, 3])
def test_node_rejects_wrong_arity(arity: int) -> None:
    params = ", ".join(f"p{i}" for i in range(arity))
    ns: dict[str, Any] = {}
    exec(f"async def f({params}):\n    return None\n", ns)
    msg = f"Node 'custom' must accept exactly two parameters (message, ctx); got {arity}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        Node(ns["f"], name="custom")


def test_arity_message_uses_function_name_by_default() -> None:
    async def lonely(msg: Any) -> Any:
        return msg

    with pytest.raises(
        ValueError, match=re.escape("Node 'lonely' must accept exactly two parameters")
    ):
        Node(lonely)  # type: ignore[arg-type]


def test_star_args_and_kwargs_count_as_one_parameter_each() -> None:
    async def f(*args: Any, **kwargs: Any) -> Any:
        return None

    # two parameters, but the second one is not positional
    with pytest.raises(ValueError, match="Context parameter must be positional"):
        Node(f)

    async def g(msg: Any, *args: Any, **kwargs: Any) -> Any:
        return None

    with pytest.raises(ValueError, match="got 3"):
        Node(g)


def test_node_rejects_keyword_only_context() -> None:
    async def f(msg: Any, *, ctx: Context) -> Any:
        return None

    with pytest.raises(ValueError, match="Context parameter must be positional"):
        Node(f)  # type: ignore[arg-type]  # a keyword-only ctx, on purpose


def test_node_accepts_positional_only_parameters() -> None:
    async def f(msg: Any, ctx: Context, /) -> Any:
        return msg

    assert Node(f).name == "f"


def test_node_accepts_an_async_callable_object() -> None:
    class Worker:
        async def __call__(self, msg: Any, ctx: Context) -> Any:
            return msg

    n = Node(Worker().__call__, name="worker")
    assert n.name == "worker"


# -- identity ---------------------------------------------------------------------------


def test_node_identity_hash_and_equality() -> None:
    a, b = Node(double), Node(double)
    assert a.node_id != b.node_id
    assert a != b
    assert a == a
    assert hash(a) == hash(a.node_id)
    table = {a: 1, b: 2}
    assert table[a] == 1 and table[b] == 2
    assert len({a, b, a}) == 2


def test_to_returns_one_adjacency_entry() -> None:
    a, b, c = Node(double, "a"), Node(double, "b"), Node(double, "c")
    assert a.to(b, c) == (a, (b, c))
    assert a.to() == (a, ())


# -- invoke ---------------------------------------------------------------------------


@pytest.fixture
def registry() -> ModelRegistry:
    reg = ModelRegistry()
    reg.register("double", In, Out)
    return reg


async def test_invoke_without_registry_passes_raw_arguments() -> None:
    seen: list[Any] = []

    async def f(msg: Any, ctx: Context) -> Any:
        seen.append((msg, ctx))
        return "raw"

    ctx = object()
    assert await Node(f).invoke({"x": 1}, ctx, registry=None) == "raw"
    assert seen == [({"x": 1}, ctx)]


async def test_invoke_validates_and_coerces(registry: ModelRegistry) -> None:
    n = Node(double)
    out = await n.invoke({"x": 2}, None, registry=registry)
    assert out == Out(y=4)
    out = await n.invoke(In(x=3), None, registry=registry)
    assert out == Out(y=6)


async def test_invoke_input_validation_error(registry: ModelRegistry) -> None:
    with pytest.raises(ValidationError) as info:
        await Node(double).invoke({"x": "not-int"}, None, registry=registry)
    assert isinstance(info.value, ValueError)


async def test_invoke_output_validation_error(registry: ModelRegistry) -> None:
    async def double(msg: In, ctx: Context) -> Any:
        return {"y": "nope"}

    with pytest.raises(ValidationError):
        await Node(double).invoke({"x": 1}, None, registry=registry)


async def test_invoke_none_result_is_never_validated(registry: ModelRegistry) -> None:
    async def double(msg: In, ctx: Context) -> Any:
        return None

    assert await Node(double).invoke({"x": 1}, None, registry=registry) is None


async def test_invoke_unregistered_node_raises_key_error(registry: ModelRegistry) -> None:
    async def other(msg: Any, ctx: Context) -> Any:
        return msg

    with pytest.raises(KeyError, match="Node 'other' not registered"):
        await Node(other).invoke({"x": 1}, None, registry=registry)


async def test_invoke_validate_none_skips_the_registry() -> None:
    async def other(msg: Any, ctx: Context) -> Any:
        return msg

    n = Node(other, policy=NodePolicy(validate="none"))
    assert await n.invoke("bare", None, registry=ModelRegistry()) == "bare"


async def test_invoke_validate_in_only(registry: ModelRegistry) -> None:
    async def double(msg: Any, ctx: Context) -> Any:
        assert isinstance(msg, In)
        return "unchecked"

    n = Node(double, policy=NodePolicy(validate="in"))
    assert await n.invoke({"x": 1}, None, registry=registry) == "unchecked"


async def test_invoke_validate_out_only(registry: ModelRegistry) -> None:
    async def double(msg: Any, ctx: Context) -> Any:
        assert msg == {"raw": True}
        return {"y": "5"}

    n = Node(double, policy=NodePolicy(validate="out"))
    assert await n.invoke({"raw": True}, None, registry=registry) == Out(y=5)


async def test_invoke_passes_context_through_untouched(registry: ModelRegistry) -> None:
    seen: list[Any] = []

    async def double(msg: In, ctx: Context) -> Any:
        seen.append(ctx)
        return Out(y=0)

    ctx = Context(Node(double))
    await Node(double).invoke({"x": 1}, ctx, registry=registry)
    assert seen == [ctx]


# -- envelope-aware validation ------------------------------------------------------------


async def test_invoke_envelope_payload_is_validated_and_result_rewrapped(
    registry: ModelRegistry,
) -> None:
    seen: list[Any] = []

    async def double(msg: Any, ctx: Context) -> Any:
        seen.append(msg)
        return {"y": msg.x * 2}

    incoming = Message(
        payload={"x": 4}, headers=Headers(tenant="t"), deadline_s=9e9, meta={"k": "v"}
    )
    out = await Node(double).invoke(incoming, None, registry=registry)
    assert seen == [In(x=4)]
    assert isinstance(out, Message)
    assert out.payload == Out(y=8)
    assert out.trace_id == incoming.trace_id
    assert out.headers == incoming.headers
    assert out.deadline_s == incoming.deadline_s
    assert out.meta == {"k": "v"}
    assert incoming.payload == {"x": 4}  # the incoming envelope itself is untouched


async def test_invoke_returned_message_is_forwarded_with_payload_validated(
    registry: ModelRegistry,
) -> None:
    async def double(msg: Any, ctx: Context) -> Any:
        return Message(payload={"y": "7"}, headers=Headers(tenant="other"), trace_id="own")

    incoming = Message(payload={"x": 1}, headers=Headers(tenant="t"))
    out = await Node(double).invoke(incoming, None, registry=registry)
    assert isinstance(out, Message)
    assert out.payload == Out(y=7)
    assert (out.trace_id, out.headers.tenant) == ("own", "other")


async def test_invoke_returned_message_with_bad_payload_fails(registry: ModelRegistry) -> None:
    async def double(msg: Any, ctx: Context) -> Any:
        return Message(payload={"y": "bad"}, headers=Headers(tenant="t"))

    with pytest.raises(ValidationError):
        await Node(double).invoke(
            Message(payload={"x": 1}, headers=Headers(tenant="t")), None, registry=registry
        )


async def test_invoke_envelope_none_result_stays_none(registry: ModelRegistry) -> None:
    async def double(msg: Any, ctx: Context) -> Any:
        return None

    msg = Message(payload={"x": 1}, headers=Headers(tenant="t"))
    assert await Node(double).invoke(msg, None, registry=registry) is None


async def test_invoke_message_in_model_receives_the_envelope() -> None:
    reg = ModelRegistry()
    reg.register("env", Message, Out)
    seen: list[Any] = []

    async def env(msg: Any, ctx: Context) -> Any:
        seen.append(msg)
        return {"y": 1}

    incoming = Message(payload={"x": 1}, headers=Headers(tenant="t"))
    out = await Node(env).invoke(incoming, None, registry=reg)
    assert seen[0] is incoming
    assert out == Out(y=1)  # a Message-typed node's bare result is not re-wrapped


async def test_invoke_envelope_with_invalid_payload_fails(registry: ModelRegistry) -> None:
    msg = Message(payload={"x": "no"}, headers=Headers(tenant="t"))
    with pytest.raises(ValidationError):
        await Node(double).invoke(msg, None, registry=registry)


async def test_invoke_duck_typed_registry() -> None:
    class Duck:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def adapters(self, name: str) -> Any:
            from pydantic import TypeAdapter

            self.asked.append(name)
            return TypeAdapter(In), TypeAdapter(Out)

    duck = Duck()
    assert await Node(double).invoke({"x": 1}, None, registry=duck) == Out(y=2)
    assert duck.asked == ["double"]
