"""Request semantics of the OpenAI layer without a server: constraints, tool modes, messages, shapes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from forge_gateway.dispatch import Call, upstream_body
from forge_gateway.engines.base import TokenLogprobs
from forge_gateway.oai.chat_input import check_modalities, template_messages
from forge_gateway.oai.decoding import request_decoder
from forge_gateway.oai.logprobs import LegacyLogprobs, TokenTexts
from forge_gateway.oai.sampling import request_constraint, sampling_fields
from forge_gateway.oai.tool_calls import ToolStream, tool_mode
from forge_gateway.routing import Target
from forge_plugins.tool_parsers import HermesToolParser
from forge_sdk.errors import InvalidRequestError
from forge_sdk.experts import ExpertModel
from forge_sdk.types import ChatCompletionRequest, CompletionRequest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return request_decoder(ChatCompletionRequest, "reject").decode(json.dumps(body))


def test_every_openai_field_decodes_and_unknown_fields_follow_the_switch() -> None:
    req = chat(
        store=True,
        metadata={"a": "b"},
        service_tier="auto",
        prediction={"type": "content", "content": "x"},
        parallel_tool_calls=False,
        user="u",
        modalities=["text"],
        reasoning_effort="low",
        web_search_options={},
        verbosity="low",
        stream_options={"include_usage": True, "include_obfuscation": False},
        safety_identifier="s",
        prompt_cache_key="k",
        logprobs=True,
        top_logprobs=3,
        logit_bias={"5": -100},
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.1,
        min_tokens=1,
        skip_special_tokens=False,
        include_stop_str_in_output=True,
        ignore_eos=False,
    )
    assert req.top_logprobs == 3
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "vendor_thing": 1})
    with pytest.raises(msgspec.ValidationError, match="vendor_thing"):
        request_decoder(ChatCompletionRequest, "reject").decode(body)
    assert request_decoder(ChatCompletionRequest, "ignore").decode(body).model == "m"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    ],
)
def test_unsupported_inputs_name_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        check_modalities(chat(**fields))
    assert err.value.param == param and err.value.status_code == 400


def test_constraints_and_their_conflicts() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
    }
    strict = request_constraint(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema, "strict": True},
            }
        )
    )
    assert strict is not None and strict.value["additionalProperties"] is False
    assert strict.value["properties"]["a"]["additionalProperties"] is False
    assert request_constraint(chat(response_format={"type": "json_object"})).kind == "json_object"  # type: ignore[union-attr]
    assert request_constraint(chat(guided_choice=["yes", "no"])).value == ("yes", "no")  # type: ignore[union-attr]
    assert request_constraint(chat(structured_outputs={"regex": "[0-9]+"})).kind == "regex"  # type: ignore[union-attr]
    assert request_constraint(chat(response_format={"type": "text"})) is None
    for bad in (
        {"guided_regex": "a", "guided_json": {}},
        {"structured_outputs": {"regex": "a", "choice": ["b"]}},
        {"guided_json": "not json"},
        {"guided_choice": []},
    ):
        with pytest.raises(InvalidRequestError):
            request_constraint(chat(**bad))


def test_sampling_fields_validate_biases_and_logprobs() -> None:
    assert sampling_fields(chat(logit_bias={"3": 5}, logprobs=True), 10)["logit_bias"] == {3: 5.0}
    for bad in (
        {"logit_bias": {"10": 1}},
        {"logit_bias": {"x": 1}},
        {"top_logprobs": 2},
        {"stop_token_ids": [99]},
    ):
        with pytest.raises(InvalidRequestError):
            sampling_fields(chat(**bad), 10)
    req = msgspec.json.decode(
        b'{"model": "m", "prompt": "p", "echo": true, "logprobs": 2}', type=CompletionRequest
    )
    fields = sampling_fields(req, 10)
    assert fields["logprobs"] == 2 and fields["prompt_logprobs"] == 2  # echo scores the prompt


def test_tool_modes_and_forced_call_schema() -> None:
    tools = chat(tools=TOOLS).tools
    required = tool_mode(tools, "required", False, None)
    assert required is not None
    schema = required.constraint().value  # type: ignore[union-attr]
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"] == {
        "enum": ["get_weather"]
    }
    content, calls = required.calls('[{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    assert content is None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert required.calls('[{"name": "get_wea')[1] == []  # cut by max_tokens: no call invented
    with pytest.raises(InvalidRequestError):
        tool_mode(
            tools,
            chat(tool_choice={"type": "function", "function": {"name": "nope"}}).tool_choice,
            None,
            None,
        )
    with pytest.raises(InvalidRequestError):
        tool_mode(None, "required", None, None)
    assert tool_mode(tools, "none", None, HermesToolParser()).calls("<tool_call>{}</tool_call>")[1] == []  # type: ignore[union-attr]


def test_required_call_schema_keeps_pydantic_refs_resolvable() -> None:
    """Nested pydantic models put their parts in ``$defs`` (``#/$defs/Addr``), self-references
    point at ``#``: both must still resolve once the parameters sit inside the ``required``
    wrapper, for every tool of the request (the grammar compiler is the judge)."""
    xgr = pytest.importorskip("xgrammar")
    person = {
        "$defs": {
            "Addr": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        },
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "addrs": {"type": "array", "items": {"$ref": "#/$defs/Addr"}},
        },
        "required": ["name", "addrs"],
    }
    node = {"type": "object", "properties": {"child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}}
    tools = chat(
        tools=[
            {"type": "function", "function": {"name": n, "parameters": p}}
            for n, p in (("person", person), ("node", node))
        ]
    ).tools
    mode = tool_mode(tools, "required", None, None)
    assert mode is not None
    schema = mode.constraint().value  # type: ignore[union-attr]
    xgr.Grammar.from_json_schema(json.dumps(schema))  # raised "Cannot find field $defs" before
    assert schema["$defs"]["forge_tool_0"]["properties"]["addrs"]["items"] == {
        "$ref": "#/$defs/forge_tool_0/$defs/Addr"
    }
    assert schema["$defs"]["forge_tool_1"]["properties"]["child"]["anyOf"][0] == {
        "$ref": "#/$defs/forge_tool_1"
    }
    assert person["properties"]["addrs"]["items"] == {"$ref": "#/$defs/Addr"}  # the request is not mutated


def test_uncompilable_constraint_names_its_field_without_native_noise() -> None:
    xgr = pytest.importorskip("xgrammar")
    from forge_gateway.engines._common import constraint_error

    bad = {"type": "wat"}
    req = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
    constraint = request_constraint(req)
    assert constraint is not None and constraint.param == "response_format"
    tools = chat(tools=[{"type": "function", "function": {"name": "f", "parameters": bad}}]).tools
    forced = tool_mode(tools, "required", None, None).constraint()  # type: ignore[union-attr]
    assert forced is not None and forced.param == "tools"
    for c in (constraint, forced):
        with pytest.raises(RuntimeError) as native:  # the real library's message, stamp and path
            xgr.Grammar.from_json_schema(json.dumps(c.value))
        err = constraint_error(c, native.value)
        assert err.param == c.param and "wat" in err.message
        assert ".cc:" not in err.message and not err.message.startswith(
            "cannot compile the output constraint: ["
        )


def test_streamed_required_calls_go_out_as_they_are_written() -> None:
    """The ``required`` array streams call by call: the id and name once the name is whole, then the
    arguments piece by piece; braces, quotes and escapes inside strings do not end a call early."""
    text = (
        '[{"name":"get_weather","arguments":{"city":"}]\\"{,","days":[1,{"n":null}]}},'
        '{"name":"get_weather","arguments":{"city":"Rome"}}]'
    )
    mode = tool_mode(chat(tools=TOOLS).tools, "required", None, None)
    assert mode is not None
    stream = ToolStream(mode)
    calls: dict[int, dict[str, str]] = {}
    first_name_at = None
    for i, char in enumerate(text):  # one character per step: every cut point is exercised
        content, deltas = stream.push(char)
        assert content is None
        for delta in deltas:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            first_name_at = i if first_name_at is None else first_name_at
    assert first_name_at is not None and first_name_at < text.index("city")  # not held to the end
    assert stream.finish() == (None, []) and stream.called
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        item["arguments"] for item in json.loads(text)
    ]
    assert len({c["id"] for c in calls.values()}) == 2 and {c["name"] for c in calls.values()} == {
        "get_weather"
    }
    cut = ToolStream(mode)  # cut by max_tokens inside the arguments: no call is claimed
    cut.push('[{"name":"get_weather","arguments":{"ci')
    assert cut.finish() == (None, []) and not cut.called


def test_streamed_auto_tool_call_holds_back_only_the_call() -> None:
    mode = tool_mode(chat(tools=TOOLS).tools, None, None, HermesToolParser())
    assert mode is not None
    stream = ToolStream(mode)
    sent = []
    for piece in [
        "Checking",
        " now <tool",
        '_call>{"name": "get_weather", ',
        '"arguments": {"city": "Rome"}}</tool_call>',
    ]:
        content, deltas = stream.push(piece)
        sent.append(content)
        assert deltas == []
    assert "".join(s for s in sent if s) == "Checking now "
    _, deltas = stream.finish()
    assert stream.called and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]


def test_tools_are_written_into_templates_that_ignore_them() -> None:
    req = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        tools=TOOLS,
    )
    written, tools = template_messages(req.messages, req.tools, native=False)
    assert tools is None and "<tools>" in written[0]["content"] and "get_weather" in written[0]["content"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in written[2]["content"]
    assert written[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native, tools = template_messages(req.messages, req.tools, native=True)
    assert tools and native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert native[2]["tool_call_id"] == "c1"


def test_legacy_logprobs_shape() -> None:
    texts = TokenTexts(lambda i: ["A", "bc", "d"][i])
    lp = LegacyLogprobs(texts)
    lp.add_prompt([0, 1], [None, TokenLogprobs(1, -0.5, [(1, -0.5), (2, -1.0)])])
    lp.add([TokenLogprobs(2, -2.0, [(0, -0.1)])])
    value = lp.take()
    assert value.tokens == ["A", "bc", "d"] and value.text_offset == [0, 1, 3]
    assert value.token_logprobs == [None, -0.5, -2.0]
    assert value.top_logprobs == [None, {"bc": -0.5, "d": -1.0}, {"A": -0.1}]


def _remote_call(body: bytes, **shape: Any) -> Call:
    expert = ExpertModel(name="e", endpoint="http://127.0.0.1:1/v1", upstream_model="up")
    request = msgspec.json.decode(body)
    return Call(request, body, "chat/completions", Target("e", expert, "requested"), len(body), **shape)


def test_upstream_body_keeps_every_other_byte() -> None:
    body = b'{"model": "a", "tools": [{"type": "function"}], "x": 1.50, "max_tokens": 7}'
    out = upstream_body(_remote_call(body, max_tokens=7), default_max_tokens=99)
    assert json.loads(out) == {"model": "up", "tools": [{"type": "function"}], "x": 1.5, "max_tokens": 7}
    assert b"1.50" in out


def test_upstream_body_fills_max_tokens_and_asks_a_stream_for_usage() -> None:
    body = b'{"model": "a", "stream": true}'
    out = json.loads(upstream_body(_remote_call(body, max_tokens=None, stream=True), default_max_tokens=99))
    assert out == {"model": "up", "stream": True, "max_tokens": 99, "stream_options": {"include_usage": True}}
