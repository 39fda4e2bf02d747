"""OpenAI request fields -> the runtime's SamplingParams, with the server's limits applied.

max_tokens: the request's (max_completion_tokens first), at most the server's limit, and prompt +
max_tokens within the model's context (400 context_length_exceeded otherwise, as OpenAI answers);
unset, it is whatever the context leaves, up to the limit. Temperature and top_p default to 1
as in OpenAI's API.
"""

from __future__ import annotations

from dataclasses import dataclass

from autodeploy.errors import RequestError
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.server.errors import APIError
from autodeploy.server.schemas import _Sampling


@dataclass
class Limits:
    max_seq_len: int  # the model's context: prompt + output
    max_tokens: int  # most new tokens one request may ask for


def context_error(limit: int, prompt: int, completion: int | None) -> APIError:
    asked = prompt + (completion or 0)
    detail = f"{prompt} in the prompt" + (f", {completion} in the completion" if completion else "")
    return APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                         f"{asked} tokens ({detail}). Please reduce the length of the prompt or completion.",
                    "messages" if completion is None else "max_tokens", "context_length_exceeded")


def resolve_max_tokens(asked: int | None, prompt_len: int, limits: Limits) -> int:
    if prompt_len >= limits.max_seq_len:
        raise context_error(limits.max_seq_len, prompt_len, None)
    if asked is None:
        return min(limits.max_tokens, limits.max_seq_len - prompt_len)
    if asked > limits.max_tokens:
        raise APIError(400, f"Invalid 'max_tokens': {asked} is above this server's limit of {limits.max_tokens}.",
                       "max_tokens", "invalid_value")
    if prompt_len + asked > limits.max_seq_len:
        raise context_error(limits.max_seq_len, prompt_len, asked)
    return asked


def sampling_params(req: _Sampling, max_tokens: int, seed_offset: int = 0) -> SamplingParams:
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported", "logit_bias", "unsupported_parameter")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens, min_tokens=req.min_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(0, req.top_k or 0), min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
            seed=None if req.seed is None else req.seed + seed_offset,
            stop=stop, ignore_eos=req.ignore_eos,
        )
    except RequestError as e:
        msg = str(e)
        param = msg.split(":", 2)[1].split()[0] if msg.count(":") >= 2 else None
        raise APIError(400, msg, param, "invalid_value") from None
