"""The built-in tool-call parsers on real and hostile model output."""

from __future__ import annotations

import json

import pytest

from forge_plugins.tool_parsers import HermesToolParser, Llama3JsonToolParser
from forge_sdk.plugins import collect, get_plugin_manager

TOOLS = ["get_weather", "add"]


def test_registered_through_the_plugin_hook() -> None:
    parsers = collect(get_plugin_manager(), "register_tool_parsers", key=lambda c: c.name)
    assert parsers["hermes"] is HermesToolParser and parsers["llama3_json"] is Llama3JsonToolParser


def test_hermes_calls_and_content() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>'
    )
    result = HermesToolParser().parse(text, TOOLS)
    assert result.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in result.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("add", {"a": 1, "b": 2}),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "plain answer, no calls",
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered tool
        '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        '<tool_call>{"arguments": {}}</tool_call>',
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": {}}</tool_call><tool_call>{bad',
    ],
)
def test_hermes_keeps_anything_else_as_content(text: str) -> None:
    result = HermesToolParser().parse(text, TOOLS)
    assert result.calls == [] and result.content == text


def test_hermes_unclosed_block_at_the_end_still_parses() -> None:
    # max_tokens can cut the closing tag after a complete object.
    result = HermesToolParser().parse('<tool_call>{"name": "add", "arguments": {"a": 1}}', TOOLS)
    assert [c.name for c in result.calls] == ["add"] and result.content is None


def test_hermes_streaming_split() -> None:
    parser = HermesToolParser()
    assert parser.call_start("Hello there") == len("Hello there")
    assert parser.call_start("Hello <tool") == len("Hello ")  # a marker may be starting: hold it back
    assert parser.call_start("Hi <tool_call>{") == 3


def test_llama3_json() -> None:
    parser = Llama3JsonToolParser()
    result = parser.parse(
        '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "get_weather", "parameters": {}}',
        TOOLS,
    )
    assert [c.name for c in result.calls] == ["add", "get_weather"] and result.content is None
    for text in ("The answer is {1}", '{"name": "add", "parameters": {}} trailing words', '{"name": "nope"}'):
        assert parser.parse(text, TOOLS).calls == []
    assert parser.call_start("  {") == 0 and parser.call_start("Sure") == 4


def test_template_selection() -> None:
    from forge_gateway.oai.tool_calls import pick_parser

    parsers = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}
    assert isinstance(pick_parser(parsers, "auto", "{{ '<|python_tag|>' }}"), Llama3JsonToolParser)
    assert isinstance(pick_parser(parsers, "auto", "<tool_call> ..."), HermesToolParser)
    assert isinstance(
        pick_parser(parsers, "auto", "plain chatml"), HermesToolParser
    )  # what the gateway writes
    assert isinstance(pick_parser(parsers, "llama3_json", "<tool_call>"), Llama3JsonToolParser)
