"""The public surface, the checks connect() makes, the codec and the command line."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import penguiflow.redis as pfredis
import redis_flows
from penguiflow import WM, FinalAnswer, Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.errors import FlowError, FlowTypeError
from penguiflow.redis import RemoteError, connect
from penguiflow.redis._codec import Codec, decode_error, encode_error

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def test_all_is_exactly_the_public_names() -> None:
    assert pfredis.__all__ == [
        "DEFAULT_PREFIX", "Client", "RemoteError", "RemoteRequest", "connect", "serve",
    ]  # fmt: skip
    for name in pfredis.__all__:
        value = getattr(pfredis, name)
        if name != "DEFAULT_PREFIX":
            assert value.__module__ == "penguiflow.redis"
            assert value.__doc__


def test_signatures_are_keyword_only_after_the_essentials() -> None:
    for fn, positional in ((connect, ["flow", "url"]), (pfredis.serve, ["flow", "url"])):
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[: len(positional)]] == positional
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[len(positional) :])


def test_addon_ships_no_root_init() -> None:
    assert not (SRC / "penguiflow" / "__init__.py").exists()
    assert (SRC / "penguiflow" / "redis" / "py.typed").exists()


class Opaque:
    pass


class Holder(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


async def keep(msg: Holder, ctx: object) -> Holder:
    return msg


def test_connect_fails_at_once_naming_the_node_and_the_model() -> None:
    node = Node(keep, name="keeper", policy=NodePolicy(validate="both"))
    registry = ModelRegistry()
    registry.register("keeper", Holder, Holder)
    flow = create(node.to())
    with pytest.raises(FlowTypeError, match=r"node 'keeper': its in-model Holder cannot cross"):
        connect(flow, "redis://127.0.0.1:1/0", registry=registry)


def test_payloads_come_back_as_their_models() -> None:
    flow, registry = redis_flows.chain()
    codec = Codec(flow, registry)
    for value in (
        redis_flows.Number(n=1),
        redis_flows.Answer(n=1, text="x"),
        [redis_flows.Doubled(n=1, doubled=2), redis_flows.Doubled(n=2, doubled=4)],
        FinalAnswer(text="done", citations=["a"]),
        WM(query="q", facts=[1, "two"]),
        {"plain": [1, 2.5, None]},
        "text",
    ):
        tag, data = codec.encode(value)
        assert codec.decode(tag, data) == value
        assert type(codec.decode(tag, data)) is type(value)
    msg = Message(payload=redis_flows.Number(n=3), headers=Headers(tenant="a"), deadline_s=5.0)
    msg.meta["k"] = [1]
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in
              codec.encode_message(msg).items()}  # fmt: skip
    assert codec.decode_message(fields) == msg


def test_an_unregistered_model_is_refused_before_it_is_sent() -> None:
    flow, registry = redis_flows.chain()
    codec = Codec(flow, registry)
    with pytest.raises(FlowTypeError, match="payload type Holder cannot cross processes"):
        codec.encode(Holder(thing=Opaque()))
    with pytest.raises(ValueError, match="unknown payload tag"):
        codec.decode("elsewhere:in", b"{}")


def test_errors_cross_as_json_without_a_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError as exc:
        error = FlowError(
            trace_id="t1", node_name="n", node_id="id", code="NODE_EXCEPTION", attempts=3,
            original=exc,
        )  # fmt: skip
    data = encode_error(error)
    assert b"Traceback" not in data and b"File " not in data
    back = decode_error("t1", data)
    assert (back.code, back.node_name, back.node_id, back.attempts) == (
        "NODE_EXCEPTION", "n", "id", 3,
    )  # fmt: skip
    assert str(back) == str(error)
    assert isinstance(back.__cause__, RemoteError)
    assert (back.__cause__.type_name, back.__cause__.text) == ("ValueError", "bad")


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("redis_flows:os", "redis_flows:os must be a PenguiFlow"),
        ("redis_flows:nothing", "'redis_flows' has no attribute 'nothing'"),
        ("no_such_module:flow", "cannot import 'no_such_module'"),
        ("redis_flows", "expected MODULE:ATTR"),
    ],
)
def test_the_command_line_names_a_bad_target(target: str, text: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "penguiflow.redis", "worker", target,
         "--url", "redis://127.0.0.1:1/0"],
        cwd=HERE, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr
