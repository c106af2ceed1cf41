"""format_sse_event / chunk_to_ws_json: exact bytes, one data: line per text line, bad input."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from penguiflow.errors import FlowError, FlowNotRunningError, FlowStoppedError, TraceCancelled
from penguiflow.streaming import (
    ErrorCode,
    ErrorEvent,
    EventSourceEncoder,
    StreamingArgumentError,
    chunk_event_data,
    chunk_to_ws_json,
    dumps,
    error_event,
    format_sse_comment,
    format_sse_event,
    format_sse_json,
    format_sse_message,
    to_jsonable,
)
from penguiflow.types import FinalAnswer, Headers, Message, StreamChunk


def chunk(text: str = "hi", **kwargs: Any) -> StreamChunk:
    kwargs.setdefault("stream_id", "s")
    kwargs.setdefault("seq", 2)
    return StreamChunk(text=text, **kwargs)


def parse_sse(frame: str) -> list[dict[str, Any]]:
    """A WHATWG event-stream parser (CRLF, LF and CR are line ends)."""
    events: list[dict[str, Any]] = []
    data: list[str] = []
    fields: dict[str, Any] = {}
    lines = frame.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line in lines:
        if line == "":
            if data:
                events.append({**fields, "data": "\n".join(data)})
            data, fields = [], {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name:
            fields[name] = value
    return events


def test_documented_example_is_byte_identical() -> None:
    out = format_sse_event(chunk(meta={"k": 1}), retry_ms=1500)
    assert out == 'event: chunk\nid: 2\ndata: hi\ndata: {"k": 1}\nretry: 1500\n\n'


def test_minimal_frame() -> None:
    assert format_sse_event(chunk()) == "event: chunk\nid: 2\ndata: hi\n\n"


def test_done_chunk_defaults_to_done_event() -> None:
    assert format_sse_event(chunk(done=True)) == "event: done\nid: 2\ndata: hi\n\n"


@pytest.mark.parametrize("name", [None, ""])
def test_empty_event_name_falls_back(name: str | None) -> None:
    assert format_sse_event(chunk(), event_name=name).startswith("event: chunk\n")


def test_custom_event_name_and_retry_zero() -> None:
    out = format_sse_event(chunk(done=True), event_name="token", retry_ms=0)
    assert out == "event: token\nid: 2\ndata: hi\nretry: 0\n\n"


def test_meta_json_is_not_ascii_escaped() -> None:
    out = format_sse_event(chunk(text="é", meta={"nœud": "ü"}))
    assert out == 'event: chunk\nid: 2\ndata: é\ndata: {"nœud": "ü"}\n\n'


def test_empty_text_keeps_one_data_line() -> None:
    assert format_sse_event(chunk(text="", done=True)) == "event: done\nid: 2\ndata: \n\n"


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("a\nb", ["a", "b"]),
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("a\n\nb", ["a", "", "b"]),
        ("a\n", ["a", ""]),
        ("\n", ["", ""]),
        ("x\r\n\ry\n", ["x", "", "y", ""]),
    ],
)
def test_multiline_text_gets_one_data_line_per_line(text: str, lines: list[str]) -> None:
    out = format_sse_event(chunk(text=text, meta={"k": 1}))
    expected = "".join(f"data: {line}\n" for line in lines)
    assert out == f'event: chunk\nid: 2\n{expected}data: {{"k": 1}}\n\n'
    # A standard parser sees exactly one event whose data is the text (LF-normalised)
    # followed by the meta line: the framing survives.
    (event,) = parse_sse(out)
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert event == {"event": "chunk", "id": "2", "data": normalised + '\n{"k": 1}'}


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x85"])
def test_only_cr_and_lf_split_lines(sep: str) -> None:
    # str.splitlines() would split on these; an SSE parser does not.
    assert format_sse_event(chunk(text=f"a{sep}b")) == f"event: chunk\nid: 2\ndata: a{sep}b\n\n"


@pytest.mark.parametrize("bad", [42, "text", {"stream_id": "s", "seq": 0, "text": "x"}, None])
def test_formatting_a_non_chunk_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"expects a penguiflow\.types\.StreamChunk"):
        format_sse_event(bad)
    with pytest.raises(TypeError, match=r"expects a penguiflow\.types\.StreamChunk"):
        chunk_to_ws_json(bad)
    with pytest.raises(TypeError, match=r"expects a penguiflow\.types\.StreamChunk"):
        format_sse_json(bad)


def test_a_message_holding_a_chunk_gets_a_hint() -> None:
    msg = Message(payload=chunk(), headers=Headers(tenant="t"))
    with pytest.raises(TypeError, match=r"pass message\.payload"):
        format_sse_event(msg)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a\nb", "a\rb"])
def test_event_name_with_a_line_break_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="single line"):
        format_sse_event(chunk(), event_name=name)


def test_ws_json_key_order_and_separators() -> None:
    out = chunk_to_ws_json(chunk(text="é", meta={"k": 1}, done=True))
    assert out == '{"stream_id": "s", "seq": 2, "text": "é", "done": true, "meta": {"k": 1}}'


def test_ws_json_extra_appends_and_overrides() -> None:
    out = chunk_to_ws_json(chunk(), extra={"type": "chunk", "seq": 99})
    assert out == (
        '{"stream_id": "s", "seq": 99, "text": "hi", "done": false, "meta": {}, "type": "chunk"}'
    )
    assert list(json.loads(out)) == ["stream_id", "seq", "text", "done", "meta", "type"]


def test_ws_json_round_trips_multiline_text() -> None:
    assert json.loads(chunk_to_ws_json(chunk(text="a\r\nb")))["text"] == "a\r\nb"


def test_sse_json_frame_is_one_data_line() -> None:
    out = format_sse_json(chunk(text="a\nb", meta={"node": "n"}, done=True))
    (event,) = parse_sse(out)
    assert event["event"] == "done"
    assert event["id"] == "2"
    assert json.loads(event["data"]) == {
        "stream_id": "s",
        "seq": 2,
        "text": "a\nb",
        "done": True,
        "meta": {"node": "n"},
    }


def test_generic_message_and_comment_frames() -> None:
    assert format_sse_message("x\ny", event="result", id="7") == (
        "event: result\nid: 7\ndata: x\ndata: y\n\n"
    )
    assert format_sse_message("x", retry_ms=5) == "data: x\nretry: 5\n\n"
    assert format_sse_comment("ping") == ": ping\n\n"
    assert format_sse_comment() == ":\n\n"
    assert parse_sse(format_sse_comment("a\nb")) == []
    with pytest.raises(ValueError, match="single line"):
        format_sse_message("x", id="1\n2")


def test_to_jsonable() -> None:
    answer = FinalAnswer(text="t", citations=["c"])
    assert to_jsonable(answer) == {"text": "t", "citations": ["c"]}
    assert to_jsonable(Message(payload=answer, headers=Headers(tenant="t"))) == {
        "text": "t",
        "citations": ["c"],
    }
    assert to_jsonable({"a": [1, 2]}) == {"a": [1, 2]}
    assert sorted(to_jsonable({1, 2})) == [1, 2]
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert to_jsonable({"at": when}) == {"at": "2026-01-02T03:04:05Z"}
    assert to_jsonable(object()).startswith("<object object")  # last resort: str()


def test_one_encoder_for_meta_everywhere() -> None:
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    c = chunk(meta={"at": when})
    assert json.loads(chunk_to_ws_json(c))["meta"] == {"at": "2026-01-02T00:00:00Z"}
    assert format_sse_event(c).endswith('data: {"at": "2026-01-02T00:00:00Z"}\n\n')
    assert dumps({"at": when}) == '{"at": "2026-01-02T00:00:00Z"}'


def test_event_source_framing() -> None:
    frames = EventSourceEncoder("tr")
    out = "".join(
        [
            frames.start(),
            frames.chunk(chunk(text="a\nb", stream_id="s1", seq=0, meta={"node": "llm"})),
            frames.chunk(chunk(text="c", stream_id="s2", seq=0)),
            frames.result(FinalAnswer(text="ok")),
            frames.error(ErrorEvent("NODE_EXCEPTION", "node 'llm' failed", "llm", "llm", "tr")),
            frames.end("drained"),
            frames.ping(),
        ]
    )
    events = parse_sse(out)
    assert [e["event"] for e in events] == ["start", "chunk", "chunk", "result", "error", "end"]
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert frames.last_id == 6
    datas = [json.loads(e["data"]) for e in events]  # what EventSource hands to listeners
    assert datas[0] == {"trace_id": "tr"}
    assert datas[1] == {
        "trace_id": "tr",
        "stream_id": "s1",
        "seq": 0,
        "node": "llm",
        "text": "a\nb",
        "done": False,
        "meta": {"node": "llm"},
    }
    assert datas[2]["node"] is None
    assert datas[3] == {"trace_id": "tr", "result": {"text": "ok", "citations": []}}
    assert datas[4] == {
        "trace_id": "tr",
        "code": "NODE_EXCEPTION",
        "node": "llm",
        "component": "llm",
        "message": "node 'llm' failed",
    }
    assert datas[5] == {"trace_id": "tr", "reason": "drained"}
    assert out.endswith(": ping\n\n")
    assert chunk_event_data(chunk(), "tr") == datas[2] | {
        "stream_id": "s",
        "seq": 2,
        "text": "hi",
    }


def test_error_events_never_carry_exception_text() -> None:
    failure = FlowError(
        trace_id="tr",
        node_name="llm",
        node_id="n1",
        code="NODE_TIMEOUT",
        attempts=3,
        original=TimeoutError("internal host db-7"),
    )
    described = error_event(failure)
    assert described == ErrorEvent(
        "NODE_TIMEOUT", "node 'llm' timed out after 3 attempts", "llm", "llm", "tr"
    )
    assert error_event(TraceCancelled("tr"), "tr").code == ErrorCode.TRACE_CANCELLED
    assert error_event(FlowStoppedError("x"), "tr").code == ErrorCode.FLOW_STOPPED
    assert error_event(FlowNotRunningError("x"), "tr").code == ErrorCode.FLOW_NOT_RUNNING
    assert error_event(TimeoutError(), "tr").code == ErrorCode.IDLE_TIMEOUT
    internal = error_event(KeyError("api key sk-123"), "tr")
    assert internal == ErrorEvent("INTERNAL", "internal server error", "server", None, "tr")
    assert "sk-123" not in json.dumps(internal.to_dict())


def test_bad_input_errors_belong_to_the_penguiflow_tree() -> None:
    with pytest.raises(StreamingArgumentError):
        format_sse_event("text")  # type: ignore[arg-type]
    with pytest.raises(StreamingArgumentError):
        format_sse_message("x", event="a\nb")


@pytest.mark.parametrize(
    ("node", "message", "component", "node_field"),
    [
        ("gate", "node 'gate' ended the request without a result", "gate", "gate"),
        ("", "the flow ended the request without a result", "flow", None),
    ],
)
def test_a_request_without_a_result_names_where_it_ended(
    node: str, message: str, component: str, node_field: str | None
) -> None:
    failure = FlowError(
        trace_id="tr",
        node_name=node,
        node_id="",
        code="NO_RESULT",
        attempts=0,
        original=None,
        message="trace tr ended without a result",
    )
    assert error_event(failure) == ErrorEvent("NO_RESULT", message, component, node_field, "tr")
