"""OpenAI-style errors: every failure answers `{"error": {"message", "type", "param", "code"}}`.

    400 invalid_request_error   malformed JSON, a bad or out-of-range value, prompt too long,
                                an unsupported schema or feature
    401 invalid_request_error   missing or wrong API key (code invalid_api_key)
    404 invalid_request_error   unknown model (code model_not_found) or path
    413 invalid_request_error   body over the size limit (code request_too_large)
    500 server_error            the engine failed on the request
    503 server_error            the engine loop is down
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from autodeploy.server.schemas import ErrorBody, ErrorResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type or (
        "server_error" if status >= 500 else "invalid_request_error"), param=param, code=code))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def validation_error(err: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the parameter, in OpenAI's words where it has them."""
    e = err.errors()[0]
    loc = [str(p) for p in e.get("loc", ()) if not str(p).startswith(("function-", "union"))]
    # drop pydantic's union-member tags ('str', 'list[ContentPart]') from the path
    param = ".".join(p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int", "float", "bool"))
    kind = e.get("type", "")
    got: Any = e.get("input")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return APIError(400, f"Invalid '{param}': {e['msg'].lower()}, got {got!r}.", param, "invalid_value")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_attributes_type":
        return APIError(400, f"Invalid type for '{param}': {e['msg'].lower()}.", param, "invalid_type")
    return APIError(400, f"Invalid '{param}': {e['msg']}.", param, "invalid_value")
