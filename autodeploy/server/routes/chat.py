"""POST /v1/chat/completions: messages through the chat template, with tools, reasoning and
structured output.

    tool_choice  none      tools left out of the prompt, output is content
                 auto      tools in the prompt; calls parsed from the output in the model's style
                 required  output forced to one call of any tool (a non-empty list of calls when
                           parallel_tool_calls) by the constrained sampler
                 named     output forced to one call of that function
    response_format json_object / json_schema: output forced to validate (constrained sampler)
    reasoning       <think> blocks split into reasoning_content for families that write them
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from autodeploy.server import generation as gen
from autodeploy.server.errors import APIError
from autodeploy.server.params import resolve_max_tokens, sampling_params
from autodeploy.server.prompting import render_chat
from autodeploy.server.reasoning import ReasoningSplitter, prompt_opens_reasoning, split_reasoning
from autodeploy.server.routes.common import parse_body
from autodeploy.server.routes.completions import response_schema
from autodeploy.server.schemas import (ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
                                       ChatCompletionResponse, ChatDelta, ChatMessageOut, FunctionCallOut,
                                       NamedToolChoice, ToolCallOut, Usage, dump)
from autodeploy.server.streaming import DONE, event_stream, sse, sse_error
from autodeploy.server.structured import tool_call_schema
from autodeploy.server.tool_calls import ToolStreamParser, parse_tool_calls

router = APIRouter()


@dataclass
class Plan:
    tools_on: bool  # tools in the prompt, calls parsed from the output
    tool_style: str | None  # hermes / llama3 / json (forced), None: no parsing
    schema: dict | None  # constrained output
    schema_param: str | None
    reasoning: bool
    starts_in_reasoning: bool


def _plan(state, req: ChatCompletionRequest) -> Plan:
    choice = req.tool_choice
    if choice is not None and choice != "none" and not req.tools:
        raise APIError(400, "tool_choice is set but no tools were given", "tool_choice")
    if choice is None:
        choice = "auto" if req.tools else "none"
    tools_on = bool(req.tools) and choice != "none"
    style, schema, param = (state.tool_style if tools_on else None), response_schema(req), "response_format"
    if tools_on and choice != "auto":
        fns = [t.function for t in req.tools]
        if isinstance(choice, NamedToolChoice):
            fns = [f for f in fns if f.name == choice.function.name]
            if not fns:
                raise APIError(400, f"tool_choice names '{choice.function.name}', which is not among the tools",
                               "tool_choice")
        parallel = choice == "required" and req.parallel_tool_calls
        schema = tool_call_schema([f.model_dump(exclude_none=True) for f in fns], parallel)
        style, param = "json", "tools"
    forced = schema is not None
    return Plan(tools_on, style, schema, param, state.reasoning and not forced, False)


def _tool_calls_out(calls, streamed: bool = False) -> list[ToolCallOut]:
    return [ToolCallOut(index=i if streamed else None, id=c.id, type="function",
                        function=FunctionCallOut(name=c.name, arguments=c.arguments)) for i, c in enumerate(calls)]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = request.app.state.server
    req = await parse_body(request, ChatCompletionRequest)
    state.check_model(req.model)
    if req.logprobs:
        raise APIError(400, "logprobs is not supported", "logprobs", "unsupported_parameter")
    if req.response_format is not None and req.response_format.type != "text" and req.min_tokens:
        raise APIError(400, "min_tokens cannot be combined with structured output", "min_tokens")
    plan = _plan(state, req)
    text, ids = render_chat(state.runtime.tokenizer, req.messages, req.tools if plan.tools_on else None)
    plan.starts_in_reasoning = plan.reasoning and prompt_opens_reasoning(text)
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = resolve_max_tokens(asked, len(ids), state.limits)
    params = []
    for j in range(req.n):
        sp = sampling_params(req, max_tokens, j)
        if plan.schema is not None:
            sp.logits_processors.append(await state.schema_processor(plan.schema, max_tokens, plan.schema_param))
        params.append(sp)
    rid = gen.new_id("chatcmpl")
    streams = await gen.submit_all(state, [ids] * req.n, params, rid)
    if req.stream:
        return event_stream(_stream(state, req, plan, rid, streams))
    if not await gen.finish(state, streams, request, "chat"):
        return Response(status_code=499)  # the client left: its choices were cancelled
    choices = [_choice(i, s.request.text, s.request.finish_reason, plan) for i, s in enumerate(streams)]
    completion = sum(s.request.num_output for s in streams)
    usage = Usage(prompt_tokens=len(ids), completion_tokens=completion, total_tokens=len(ids) + completion)
    return JSONResponse(dump(ChatCompletionResponse(id=rid, model=req.model, choices=choices, usage=usage)))


def _choice(index: int, text: str, finish: str | None, plan: Plan) -> ChatChoice:
    reasoning = None
    if plan.reasoning:
        reasoning, text = split_reasoning(text, plan.starts_in_reasoning)
        text = text or ""
    calls = []
    if plan.tool_style is not None:
        content, calls = parse_tool_calls(text, plan.tool_style)
    else:
        content = text
    msg = ChatMessageOut(content=content if not calls else (content or None), reasoning_content=reasoning,
                         tool_calls=_tool_calls_out(calls) or None)
    return ChatChoice(index=index, message=msg, finish_reason="tool_calls" if calls else finish)


async def _stream(state, req: ChatCompletionRequest, plan: Plan, rid: str, streams) -> AsyncIterator[str]:
    created = int(time.time())
    splitters = [ReasoningSplitter(plan.starts_in_reasoning) if plan.reasoning else None for _ in streams]
    parsers = [ToolStreamParser(plan.tool_style) if plan.tool_style else None for _ in streams]

    def chunk(i: int, delta: ChatDelta, finish: str | None = None) -> str:
        return sse(ChatCompletionChunk(id=rid, created=created, model=req.model,
                                       choices=[ChatChunkChoice(index=i, delta=delta, finish_reason=finish)]))

    def pieces(i: int, text: str, last: bool) -> list[ChatDelta]:
        reasoning, content = text, ""
        if splitters[i] is not None:
            reasoning, content = splitters[i].feed(text)
            if last:
                r2, c2 = splitters[i].finish()
                reasoning, content = reasoning + r2, content + c2
        else:
            reasoning, content = "", text
        out = [ChatDelta(reasoning_content=reasoning)] if reasoning else []
        tool_deltas = []
        if parsers[i] is not None:
            content, tool_deltas = parsers[i].feed(content)
            if last:
                c2, t2 = parsers[i].finish()
                content, tool_deltas = content + c2, tool_deltas + t2
        if content:
            out.append(ChatDelta(content=content))
        if tool_deltas:
            out.append(ChatDelta(tool_calls=[ToolCallOut(index=d.index, id=d.id, type="function" if d.id else None,
                                                         function=FunctionCallOut(name=d.name, arguments=d.arguments))
                                             for d in tool_deltas]))
        return out

    try:
        for i in range(len(streams)):
            yield chunk(i, ChatDelta(role="assistant", content=""))
        async for i, d in gen.merged(streams):
            if d.finished and (failed := gen.engine_failure(streams[i])):
                yield sse_error(failed)
                continue
            for delta in pieces(i, d.text, d.finished):
                yield chunk(i, delta)
            if d.finished:
                saw_calls = parsers[i] is not None and parsers[i].saw_calls
                yield chunk(i, ChatDelta(), "tool_calls" if saw_calls else d.finish_reason)
        if req.stream_options and req.stream_options.include_usage:
            p = streams[0].request.num_prompt
            c = sum(s.request.num_output for s in streams)
            yield sse(ChatCompletionChunk(id=rid, created=created, model=req.model, choices=[],
                                          usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)))
        yield DONE
    finally:
        gen.cancel_unfinished(state, streams)
        gen.record(state, "chat", streams)
