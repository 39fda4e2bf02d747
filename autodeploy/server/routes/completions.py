"""POST /v1/completions: prompt text or token ids (one or many) -> text, whole or streamed.

Choice i * n + j is prompt i's j-th sample. response_format (json_object / json_schema) is
accepted here too, as an extension, through the same constrained sampler as chat.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from autodeploy.server import generation as gen
from autodeploy.server.errors import APIError
from autodeploy.server.params import resolve_max_tokens, sampling_params
from autodeploy.server.routes.common import parse_body
from autodeploy.server.schemas import CompletionChoice, CompletionRequest, CompletionResponse, Usage, dump
from autodeploy.server.streaming import DONE, event_stream, sse, sse_error

router = APIRouter()


def _prompts(state, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    p = req.prompt
    if isinstance(p, str) or (p and isinstance(p[0], str)):
        texts = [p] if isinstance(p, str) else list(p)
        tok = state.runtime.tokenizer
        if tok is None:
            raise APIError(400, "this model has no tokenizer: send prompts as token ids", "prompt")
        return [list(tok(t)["input_ids"]) if t else [] for t in texts], texts
    ids = [p] if not p or isinstance(p[0], int) else list(p)
    return [list(x) for x in ids], [state.runtime.decode(list(x)) for x in ids]


def response_schema(req) -> dict | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return {"type": "object"}
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs json_schema.schema", "response_format.json_schema")
    return rf.json_schema.schema_


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = request.app.state.server
    req = await parse_body(request, CompletionRequest)
    state.check_model(req.model)
    if req.suffix:
        raise APIError(400, "suffix is not supported", "suffix", "unsupported_parameter")
    if (req.best_of or 1) > 1:
        raise APIError(400, "best_of > 1 is not supported", "best_of", "unsupported_parameter")
    if req.logprobs:
        raise APIError(400, "logprobs is not supported on /v1/completions", "logprobs", "unsupported_parameter")
    prompts, texts = _prompts(state, req)
    if any(not p for p in prompts):
        raise APIError(400, "Invalid 'prompt': the prompt is empty.", "prompt", "invalid_value")
    schema = response_schema(req)
    all_ids, all_params = [], []
    for p in prompts:
        max_tokens = resolve_max_tokens(req.max_tokens if req.max_tokens is not None else 16, len(p), state.limits)
        for j in range(req.n):
            sp = sampling_params(req, max_tokens, j)
            if schema is not None:
                sp.logits_processors.append(await state.schema_processor(schema, max_tokens, "response_format"))
            all_ids.append(p)
            all_params.append(sp)
    rid = gen.new_id("cmpl")
    streams = await gen.submit_all(state, all_ids, all_params, rid)
    echo = [texts[i // req.n] if req.echo else "" for i in range(len(streams))]
    if req.stream:
        return event_stream(_stream(state, req, rid, streams, echo))
    if not await gen.finish(state, streams, request, "completions"):
        return Response(status_code=499)  # the client left: its choices were cancelled
    choices = [CompletionChoice(index=i, text=echo[i] + s.request.text, finish_reason=s.request.finish_reason)
               for i, s in enumerate(streams)]
    usage = _usage(prompts, streams)
    return JSONResponse(dump(CompletionResponse(id=rid, model=req.model, choices=choices, usage=usage)))


def _usage(prompts, streams) -> Usage:
    p = sum(len(x) for x in prompts)
    c = sum(s.request.num_output for s in streams)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


async def _stream(state, req: CompletionRequest, rid: str, streams, echo: list[str]) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(i: int, text: str, finish: str | None = None) -> str:
        return sse(CompletionResponse(id=rid, created=created, model=req.model,
                                      choices=[CompletionChoice(index=i, text=text, finish_reason=finish)]))

    try:
        for i, e in enumerate(echo):
            if e:
                yield chunk(i, e)
        async for i, d in gen.merged(streams):
            if d.text or d.finished:
                failed = gen.engine_failure(streams[i]) if d.finished else None
                if failed:
                    yield sse_error(failed)
                    continue
                yield chunk(i, d.text, d.finish_reason if d.finished else None)
        if req.stream_options and req.stream_options.include_usage:
            prompts = [s.request.prompt_token_ids for s in streams[:: req.n]]
            yield sse(CompletionResponse(id=rid, created=created, model=req.model, choices=[],
                                         usage=_usage(prompts, streams)))
        yield DONE
    finally:
        gen.cancel_unfinished(state, streams)
        gen.record(state, "completions", streams)
