"""Acceptance on the real example model (slow): `autodeploy serve example:smollm2`'s app driven by
the official openai client, sync and async, streaming and not. One server for the module."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

import autodeploy
from tests.server.client import serve, wait_idle

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
ARGS_SCHEMA = WEATHER["function"]["parameters"]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PARIS_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# one worked example in the history: the 135M model then answers in the tool-call format itself
ONE_SHOT = [{"role": "user", "content": "What is the weather like in London today?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "London", "unit": "celsius"}'}}]},
            {"role": "user", "content": "What is the weather like in Paris today?"}]
CITY = {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                                         "country": {"type": "string"}, "is_capital": {"type": "boolean"}},
        "required": ["name", "population", "country", "is_capital"], "additionalProperties": False}


@pytest.fixture(scope="module")
def served():
    rt = autodeploy.optimize("example:smollm2", "cpu", max_seq_len=2048, max_num_tokens=2048)
    s = serve(rt, model_name="smollm2")
    yield s
    s.server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0)


def streamed_text(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_capital_of_france_sync_async_streaming(served, client):
    kw = dict(model="smollm2", messages=FRANCE, max_tokens=24, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    streamed = streamed_text(client.chat.completions.create(**kw, stream=True))

    async def both():
        ac = openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0)
        r = await ac.chat.completions.create(**kw)
        s = await ac.chat.completions.create(**kw, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
        await ac.close()
        return r.choices[0].message.content, text

    a_plain, a_streamed = asyncio.run(both())
    assert "Paris" in plain
    assert plain == streamed == a_plain == a_streamed
    wait_idle(served.runtime)


def calls_from_stream(stream) -> tuple[dict[int, list[str]], str | None]:
    calls: dict[int, list[str]] = {}
    finish = None
    for ch in stream:
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            if tc.function.name:
                calls[tc.index] = [tc.function.name, ""]
            calls[tc.index][1] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    return calls, finish


def test_forced_weather_tool_call(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model="smollm2", messages=PARIS_WEATHER, tools=[WEATHER], tool_choice=named,
                                       max_tokens=48, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, ARGS_SCHEMA)
    assert call.function.name == "get_weather" and args["city"] == "Paris"
    calls, finish = calls_from_stream(client.chat.completions.create(
        model="smollm2", messages=PARIS_WEATHER, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        max_tokens=48, temperature=0, stream=True))
    assert finish == "tool_calls" and [n for n, _ in calls.values()] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0][1]), ARGS_SCHEMA)


def test_auto_tool_call_where_the_model_cooperates(client):
    r = client.chat.completions.create(model="smollm2", messages=ONE_SHOT, tools=[WEATHER], tool_choice="auto",
                                       max_tokens=48, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, ARGS_SCHEMA)
    assert call.function.name == "get_weather" and args["city"] == "Paris"
    calls, finish = calls_from_stream(client.chat.completions.create(
        model="smollm2", messages=ONE_SHOT, tools=[WEATHER], max_tokens=48, temperature=0, stream=True))
    assert finish == "tool_calls" and json.loads(calls[0][1]) == args
    # asked without an example, this model answers in prose: content, and no call made up from it
    prose = client.chat.completions.create(model="smollm2", messages=PARIS_WEATHER, tools=[WEATHER], max_tokens=24,
                                           temperature=0).choices[0]
    assert prose.message.tool_calls is None and prose.finish_reason != "tool_calls" and prose.message.content


def test_json_schema_responses_validate(served, client):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    msgs = [{"role": "user", "content": "Describe the capital of France as JSON."}]
    greedy = client.chat.completions.create(model="smollm2", messages=msgs, response_format=fmt, max_tokens=64,
                                            temperature=0)
    value = json.loads(greedy.choices[0].message.content)
    jsonschema.validate(value, CITY)
    assert greedy.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(model="smollm2", messages=msgs, response_format=fmt, max_tokens=64,
                                             temperature=0.8, n=3, seed=0)
    for c in sampled.choices:
        jsonschema.validate(json.loads(c.message.content), CITY)
    text = streamed_text(client.chat.completions.create(model="smollm2", messages=msgs, response_format=fmt,
                                                        max_tokens=64, temperature=0, stream=True))
    assert json.loads(text) == value
    obj = client.chat.completions.create(model="smollm2", messages=msgs, response_format={"type": "json_object"},
                                         max_tokens=48, temperature=0)
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    wait_idle(served.runtime)
