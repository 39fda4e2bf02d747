"""The OpenAI-compatible server end to end on a tiny random Llama (real tokenizer, export, KV cache,
sampler, HTTP on 127.0.0.1): the official openai client, sync and async, streaming and not;
structured output and forced tool calls that always validate; bad requests answered with the
right status and an OpenAI error body while the server stays up; disconnects that free pages."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import jsonschema
import openai
import pytest

import autodeploy
from autodeploy.runtime.sampling import SamplingParams
from tests.server.client import serve, wait_idle

KEY = "sk-test-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 0}}, "required": ["city", "unit"], "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "tall": {"type": "boolean"},
    "pets": {"type": "array", "items": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
                                                                          "weight": {"type": "number"}},
                                        "required": ["kind"]}, "maxItems": 3},
    "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["name", "age", "pets"]}
PROMPTS = ["hi", "What is the capital of France?", "tell me about the lazy dog"]


@pytest.fixture(scope="module")
def served(tiny_chat_dir):
    rt = autodeploy.optimize(str(tiny_chat_dir), "cpu", max_seq_len=1024, max_batch_size=16, kv_num_pages=256,
                             kv_page_size=16, max_num_tokens=512)
    # references computed before the server owns the engine: greedy chat answers, 12 new tokens
    refs = {p: rt.generate([rt.apply_chat_template([{"role": "user", "content": p}])],
                           SamplingParams(max_tokens=12))[0].text for p in PROMPTS}
    s = serve(rt, api_key=KEY, max_body_bytes=64 * 1024, max_tokens=128)
    s.refs = refs
    yield s
    s.server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key=KEY, max_retries=0)


def chat(client, content="hi", **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          **{"max_tokens": 12, "temperature": 0, **kw})


# ---- plain generation ----------------------------------------------------------------------------
def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"] and models[0].owned_by == "autodeploy"
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_matches_the_runtime(served, client):
    for p in PROMPTS:
        r = chat(client, p)
        assert r.choices[0].message.content == served.refs[p]
        assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    wait_idle(served.runtime)


def test_chat_stream_has_openai_chunks_and_usage_last(served, client):
    chunks = list(chat(client, PROMPTS[1], stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == served.refs[PROMPTS[1]]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_async_client_concurrent_streams_and_plain(served):
    async def run():
        ac = openai.AsyncOpenAI(base_url=served.base_url, api_key=KEY, max_retries=0)
        msgs = lambda p: [{"role": "user", "content": p}]

        async def streamed(p):
            s = await ac.chat.completions.create(model="tiny", messages=msgs(p), max_tokens=12, temperature=0,
                                                 stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

        async def plain(p):
            r = await ac.chat.completions.create(model="tiny", messages=msgs(p), max_tokens=12, temperature=0)
            return r.choices[0].message.content

        out = await asyncio.gather(*[f(p) for p in PROMPTS for f in (streamed, plain)])
        await ac.close()
        return out

    out = asyncio.run(run())
    assert out == [served.refs[p] for p in PROMPTS for _ in range(2)]
    wait_idle(served.runtime)


def test_completions_text_ids_echo_and_n(served, client):
    rt = served.runtime
    r = client.completions.create(model="tiny", prompt=["the quick brown", "hello"], max_tokens=6, temperature=0)
    assert [c.index for c in r.choices] == [0, 1] and all(c.finish_reason for c in r.choices)
    ids = rt.tokenizer("the quick brown")["input_ids"]
    r2 = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert r2.choices[0].text == "the quick brown" + r.choices[0].text
    r3 = client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=1.0, n=3, seed=7)
    r4 = client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=1.0, n=3, seed=7)
    assert [c.text for c in r3.choices] == [c.text for c in r4.choices]  # seeded: reproducible
    assert len({c.text for c in r3.choices}) > 1  # each choice its own seed
    assert 3 <= r3.usage.completion_tokens <= 18 and r3.usage.prompt_tokens == len(rt.tokenizer("hello")["input_ids"])
    streamed = list(client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=1.0, n=3,
                                              seed=7, stream=True))
    by_index = {i: "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == i)
                for i in range(3)}
    assert [by_index[i] for i in range(3)] == [c.text for c in r3.choices]


# ---- structured output and tool calls ------------------------------------------------------------
def test_json_schema_and_json_object_always_validate(served, client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = chat(client, "describe a person", max_tokens=120, temperature=1.0, n=6, seed=1, response_format=fmt)
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), PERSON)
        assert c.finish_reason == "stop"  # closed within max_tokens, with the end token
    r = chat(client, "anything", max_tokens=60, temperature=1.5, n=4, seed=2, response_format={"type": "json_object"})
    assert all(isinstance(json.loads(c.message.content), dict) for c in r.choices)
    s = chat(client, "describe", max_tokens=80, temperature=1.0, seed=3, stream=True, response_format=fmt)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in s if c.choices)), PERSON)
    wait_idle(served.runtime)


def test_completions_accept_response_format(client):
    r = client.completions.create(model="tiny", prompt="json:", max_tokens=40, temperature=1.0, seed=4,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                      "name": "w", "schema": WEATHER_TOOL["function"]["parameters"]}}})
    jsonschema.validate(json.loads(r.choices[0].text), WEATHER_TOOL["function"]["parameters"])


def test_named_tool_choice_forces_a_valid_call(served, client):
    schema = WEATHER_TOOL["function"]["parameters"]
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = chat(client, "weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=named, max_tokens=60,
             temperature=1.0, n=4, seed=5)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and c.message.content is None
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schema)
    s = chat(client, "weather in Paris?", tools=[WEATHER_TOOL], tool_choice=named, max_tokens=60, temperature=1.0,
             seed=6, stream=True)
    calls: dict[int, list[str]] = {}
    finish = None
    for ch in s:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            if tc.function.name:
                calls[tc.index] = [tc.function.name, ""]
            calls[tc.index][1] += tc.function.arguments or ""
        finish = (ch.choices[0].finish_reason if ch.choices else None) or finish
    assert finish == "tool_calls" and list(calls) == [0] and calls[0][0] == "get_weather"
    jsonschema.validate(json.loads(calls[0][1]), schema)
    wait_idle(served.runtime)


def test_required_tool_choice_with_parallel_calls(client):
    r = chat(client, "weather and time?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required", max_tokens=100,
             temperature=1.0, n=3, seed=8)
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, TIME_TOOL)}
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) >= 1
        for call in c.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name])
    one = chat(client, "time?", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required", parallel_tool_calls=False,
               max_tokens=60, temperature=1.0, seed=9)
    assert len(one.choices[0].message.tool_calls) == 1


def test_tool_choice_none_and_tool_history(served, client):
    r = chat(client, PROMPTS[1], tools=[WEATHER_TOOL], tool_choice="none")
    assert r.choices[0].message.content == served.refs[PROMPTS[1]] and r.choices[0].message.tool_calls is None
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    r = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER_TOOL], max_tokens=5,
                                       temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


# ---- errors --------------------------------------------------------------------------------------
def post(served, path, body=None, raw=None, key=KEY, timeout=30.0):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(served.server.url + path, json=body, content=raw, headers=headers, timeout=timeout)


def error_of(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return err


BASE = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize("change, status, param, code", [
    ({"model": "nope"}, 404, "model", "model_not_found"),
    ({"max_tokens": -1}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 500}, 400, "max_tokens", "invalid_value"),  # over the server's limit of 128
    ({"max_tokens": "many"}, 400, "max_tokens", "invalid_type"),
    ({"temperature": -0.5}, 400, "temperature", "invalid_value"),
    ({"temperature": 3}, 400, "temperature", "invalid_value"),
    ({"top_p": 0}, 400, "top_p", "invalid_value"),
    ({"presence_penalty": 9}, 400, "presence_penalty", "invalid_value"),
    ({"n": 0}, 400, "n", "invalid_value"),
    ({"messages": []}, 400, "messages", None),
    ({"messages": None}, 400, "messages", None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", None),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 400, "messages", "context_length_exceeded"),
    ({"max_tokens": 120, "messages": [{"role": "user", "content": "x" * 950}]}, 400, "max_tokens",
     "context_length_exceeded"),
    ({"tool_choice": "required"}, 400, "tool_choice", None),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400,
     "tool_choice", None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "^a$"}}}}, 400, "response_format", "unsupported_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON}}, "max_tokens": 5},
     400, "response_format", "unsupported_schema"),
    ({"logit_bias": {"5": 10}}, 400, "logit_bias", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages.0.content", "unsupported_content"),
])
def test_bad_chat_requests(served, change, status, param, code):
    body = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    err = error_of(post(served, "/v1/chat/completions", body), status)
    assert err["param"] == param and (code is None or err["code"] == code), err


def test_transport_level_errors(served):
    err = error_of(post(served, "/v1/chat/completions", raw=b'{"model": "tiny", "messages": [}'), 400)
    assert err["code"] == "invalid_json"
    error_of(post(served, "/v1/chat/completions", raw=b"[1, 2]"), 400)
    err = error_of(post(served, "/v1/chat/completions", BASE, key="sk-wrong"), 401)
    assert err["code"] == "invalid_api_key"
    assert post(served, "/v1/chat/completions", BASE, key=None).status_code == 401
    assert httpx.get(served.server.url + "/metrics").status_code == 401  # the key guards every path but /health
    big = {**BASE, "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert error_of(post(served, "/v1/chat/completions", big), 413)["code"] == "request_too_large"
    chunked = httpx.post(served.server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                         content=iter([b'{"model": "tiny", "prompt": "', b"x" * 70_000, b'"}']))
    assert error_of(chunked, 413)["code"] == "request_too_large"
    assert error_of(httpx.get(served.server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)
    err = error_of(post(served, "/v1/completions", {"model": "tiny", "prompt": "hi", "best_of": 3}), 400)
    assert err["param"] == "best_of"
    err = error_of(post(served, "/v1/completions", {"model": "tiny", "prompt": [[1, 2], [999999]]}), 400)
    assert "vocabulary" in err["message"]
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=served.base_url, api_key=KEY, max_retries=0).chat.completions.create(
            model="other", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.base_url, api_key="bad", max_retries=0).models.list()
    health = httpx.get(served.server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    wait_idle(served.runtime)


# ---- disconnects and metrics ---------------------------------------------------------------------
def test_disconnects_cancel_and_free_pages(served):
    rt = served.runtime
    cancelled = rt.engine.finished["cancelled"]
    body = {**BASE, "max_tokens": 120, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", served.server.url + "/v1/chat/completions", json=body, headers=served.headers(),
                      timeout=30) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)
    wait_idle(rt)  # the stream's client went away after two chunks
    assert rt.engine.finished["cancelled"] == cancelled + 1
    # a non-streaming client that closes its connection while its request runs
    body = json.dumps({**BASE, "max_tokens": 128, "ignore_eos": True, "n": 4}).encode()
    with socket.create_connection(("127.0.0.1", served.server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        deadline = time.monotonic() + 10
        while not rt.engine.requests and time.monotonic() < deadline:
            time.sleep(0.002)
        assert rt.engine.requests, "the request never started"
    wait_idle(rt)
    assert rt.engine.finished["cancelled"] == cancelled + 5  # its four choices


def test_metrics_in_prometheus_format(served, client):
    chat(client, "hi")
    text = httpx.get(served.server.url + "/metrics", headers=served.headers()).text
    for name in ("autodeploy_requests_total", "autodeploy_prompt_tokens_total", "autodeploy_generation_tokens_total",
                 "autodeploy_time_to_first_token_seconds_bucket", "autodeploy_time_per_output_token_seconds_count",
                 "autodeploy_kv_pages_used", "autodeploy_kv_pages_total 256", "autodeploy_num_requests_waiting"):
        assert name in text, name
    assert 'autodeploy_requests_total{endpoint="chat",finish_reason="length"}' in text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(values["autodeploy_time_to_first_token_seconds_count"]) >= 1
    assert values['autodeploy_time_to_first_token_seconds_bucket{le="+Inf"}'] == \
        values["autodeploy_time_to_first_token_seconds_count"]
