"""Server-sent events in OpenAI's format: `data: {chunk}\\n\\n` per chunk, then `data: [DONE]\\n\\n`.

A failure after the stream has begun (the status line is already sent) goes out as one
`data: {"error": {...}}` event before [DONE], as OpenAI's API does.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from autodeploy.server.schemas import ErrorBody, ErrorResponse, dump

DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse(obj: BaseModel | dict[str, Any]) -> str:
    body = dump(obj) if isinstance(obj, BaseModel) else obj
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_error(message: str, status: int = 500, code: str | None = None) -> str:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return sse(ErrorResponse(error=ErrorBody(message=message, type=kind, param=None, code=code)).model_dump())


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)
