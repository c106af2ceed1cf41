"""The message types, and ``Message`` reading missing attributes from its payload."""

from __future__ import annotations

import copy
import pickle
import re
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import penguiflow.types as types_mod
from penguiflow.clock import use_wall_clock, wall_time
from penguiflow.types import WM, FinalAnswer, Headers, Message, PlanStep, StreamChunk, Thought


def read(message: Message, name: str) -> Any:
    """``message.<name>``: the payload fallback is deliberately invisible to type checkers."""
    return getattr(message, name)


class PackOut(BaseModel):
    prompt: str


def test_module_all_is_the_seven_models() -> None:
    assert set(types_mod.__all__) == {
        "Headers",
        "Message",
        "StreamChunk",
        "PlanStep",
        "Thought",
        "WM",
        "FinalAnswer",
    }
    for name in types_mod.__all__:
        assert issubclass(getattr(types_mod, name), BaseModel)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (Headers, ["tenant", "topic", "priority"]),
        (Message, ["payload", "headers", "trace_id", "ts", "deadline_s", "meta"]),
        (StreamChunk, ["stream_id", "seq", "text", "done", "meta", "node"]),
        (PlanStep, ["kind", "args", "max_concurrency"]),
        (Thought, ["steps", "rationale", "done"]),
        (
            WM,
            ["query", "facts", "hops", "budget_hops", "tokens_used", "budget_tokens", "confidence"],
        ),
        (FinalAnswer, ["text", "citations"]),
    ],
)
def test_fields_in_declaration_order(model: type[BaseModel], fields: list[str]) -> None:
    assert list(model.model_fields) == fields


def test_headers_defaults_and_required_tenant() -> None:
    h = Headers(tenant="acme")
    assert (h.tenant, h.topic, h.priority) == ("acme", None, 0)
    with pytest.raises(ValidationError):
        Headers()  # type: ignore[call-arg]


def test_message_defaults() -> None:
    m = Message(payload=1, headers=Headers(tenant="a"))
    assert re.fullmatch(r"[0-9a-f]{32}", m.trace_id)
    assert uuid.UUID(hex=m.trace_id).version == 4
    assert m.deadline_s is None
    assert m.meta == {}
    assert isinstance(m.ts, float)


def test_message_requires_payload_and_headers() -> None:
    with pytest.raises(ValidationError):
        Message(headers=Headers(tenant="a"))  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Message(payload=1)  # type: ignore[call-arg]


def test_message_headers_dict_is_coerced_and_extra_keys_ignored() -> None:
    # A dict for headers and an unknown keyword, on purpose: both are accepted at run time.
    m = Message(
        payload=None,
        headers={"tenant": "acme", "topic": "x"},  # type: ignore[arg-type]
        bogus=1,  # type: ignore[call-arg]
    )
    assert m.headers == Headers(tenant="acme", topic="x")
    assert "bogus" not in m.model_dump()


def test_messages_get_distinct_trace_ids_and_non_decreasing_ts() -> None:
    msgs = [Message(payload=i, headers=Headers(tenant="a")) for i in range(50)]
    assert len({m.trace_id for m in msgs}) == 50
    stamps = [m.ts for m in msgs]
    assert stamps == sorted(stamps)


def test_message_ts_reads_the_wall_clock_seam() -> None:
    with use_wall_clock(lambda: 1234.5):
        assert wall_time() == 1234.5
        m = Message(payload=1, headers=Headers(tenant="a"))
    assert m.ts == 1234.5
    assert wall_time() != 1234.5


def test_mutable_defaults_are_fresh_per_instance() -> None:
    a = Message(payload=1, headers=Headers(tenant="a"))
    b = Message(payload=1, headers=Headers(tenant="a"))
    a.meta["k"] = 1
    assert b.meta == {}
    w1, w2 = WM(query="q"), WM(query="q")
    w1.facts.append(1)
    assert w2.facts == []
    f1, f2 = FinalAnswer(text="x"), FinalAnswer(text="y")
    f1.citations.append("c")
    assert f2.citations == []
    s1, s2 = StreamChunk(stream_id="s", seq=0, text=""), StreamChunk(stream_id="s", seq=1, text="")
    s1.meta["a"] = 1
    assert s2.meta == {}
    p1, p2 = PlanStep(kind="web"), PlanStep(kind="sql")
    p1.args["a"] = 1
    assert p2.args == {}


def test_models_are_mutable() -> None:
    m = Message(payload=1, headers=Headers(tenant="a"))
    m.payload = 2
    m.deadline_s = 5.0
    assert (m.payload, m.deadline_s) == (2, 5.0)


def test_other_model_defaults() -> None:
    assert StreamChunk(stream_id="s", seq=1, text="t").done is False
    step = PlanStep(kind="retrieve")
    assert (step.args, step.max_concurrency) == ({}, 1)
    assert Thought(steps=[step], rationale="r").done is False
    wm = WM(query="q")
    assert (wm.facts, wm.hops, wm.budget_hops, wm.tokens_used, wm.budget_tokens, wm.confidence) == (
        [],
        0,
        8,
        0,
        None,
        0.0,
    )
    assert FinalAnswer(text="t").citations == []


@pytest.mark.parametrize("kind", ["retrieve", "web", "sql", "summarize", "route", "stop"])
def test_planstep_accepts_every_kind(kind: str) -> None:
    assert PlanStep(kind=kind).kind == kind  # type: ignore[arg-type]


def test_planstep_rejects_unknown_kind() -> None:
    with pytest.raises(ValidationError):
        PlanStep(kind="dance")  # type: ignore[arg-type]


def test_normal_coercion() -> None:
    assert StreamChunk(stream_id="s", seq="3", text="t").seq == 3  # type: ignore[arg-type]
    assert Headers(tenant="a", priority="2").priority == 2  # type: ignore[arg-type]


# -- attribute fallback ---------------------------------------------------------------------


def test_message_reads_missing_public_attributes_from_payload() -> None:
    m = Message(payload=PackOut(prompt="hello"), headers=Headers(tenant="a"))
    assert read(m, "prompt") == "hello"
    assert m.payload.prompt == "hello"


def test_message_own_fields_win_over_payload_attributes() -> None:
    class Shadow(BaseModel):
        headers: str = "payload-headers"
        meta: str = "payload-meta"

    m = Message(payload=Shadow(), headers=Headers(tenant="a"))
    assert m.headers == Headers(tenant="a")
    assert m.meta == {}


def test_fallback_raises_attribute_error_when_payload_lacks_it() -> None:
    m = Message(payload=PackOut(prompt="x"), headers=Headers(tenant="a"))
    with pytest.raises(AttributeError):
        read(m, "nope")
    assert not hasattr(m, "nope")


def test_fallback_never_applies_to_private_names() -> None:
    class Private:
        _secret = 1
        public = 2

    m = Message(payload=Private(), headers=Headers(tenant="a"))
    assert read(m, "public") == 2
    with pytest.raises(AttributeError):
        read(m, "_secret")


def test_setting_an_attribute_is_never_forwarded_to_the_payload() -> None:
    payload = PackOut(prompt="x")
    m = Message(payload=payload, headers=Headers(tenant="a"))
    with pytest.raises((ValueError, AttributeError)):
        m.prompt = "changed"  # type: ignore[attr-defined]  # the error is the point
    assert payload.prompt == "x"


def test_message_with_fallback_still_copies_and_pickles() -> None:
    m = Message(payload=PackOut(prompt="x"), headers=Headers(tenant="a"), meta={"k": [1]})
    deep = copy.deepcopy(m)
    assert deep == m
    assert deep.meta is not m.meta
    assert copy.copy(m) == m
    assert pickle.loads(pickle.dumps(m)) == m
    clone = m.model_copy(update={"payload": PackOut(prompt="y")})
    assert read(clone, "prompt") == "y"
    assert clone.trace_id == m.trace_id


class Extra(Message):
    note: str = ""


def test_with_payload_matches_model_copy_with_an_update() -> None:
    message = Message(payload="a", headers=Headers(tenant="t"), deadline_s=5.0, meta={"k": 1})
    copied = message.with_payload(["a", "b"])
    expected = message.model_copy(update={"payload": ["a", "b"]})
    assert copied == expected
    assert copied.model_fields_set == expected.model_fields_set
    assert copied.meta is message.meta  # a shallow copy, as model_copy makes
    assert message.payload == "a"  # the original is untouched


def test_with_payload_keeps_the_subclass_and_its_fields() -> None:
    message = Extra(payload=1, headers=Headers(tenant="t"), note="n")
    copied = message.with_payload(2)
    assert type(copied) is Extra
    assert (copied.payload, copied.note, copied.trace_id) == (2, "n", message.trace_id)
