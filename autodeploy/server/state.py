"""What every route reads: the runtime, its engine driver, the served name, limits and parsers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

from autodeploy.server.driver import EngineDriver
from autodeploy.server.errors import APIError
from autodeploy.server.metrics import ServerMetrics
from autodeploy.server.params import Limits
from autodeploy.server.prompting import template_of
from autodeploy.server.reasoning import reasoning_enabled
from autodeploy.server.structured import StructuredOutputs
from autodeploy.server.tool_calls import STYLES, detect_style


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens: int | None = None  # most new tokens per request; None: the model's context
    reasoning: Literal["auto", "on", "off"] = "auto"  # split <think> blocks: per model family / always / never
    tool_call_style: str | None = None  # hermes | llama3; None: from the chat template


class ServerState:
    def __init__(self, runtime: Any, config: ServerConfig):
        self.runtime = runtime
        self.config = config
        self.driver = EngineDriver(runtime)
        self.metrics = ServerMetrics()
        self.created = int(time.time())
        tok = runtime.tokenizer
        self.chat_template = template_of(tok)
        cfg = runtime.hf_config
        self.model_type = getattr(cfg, "model_type", None)
        self.limits = Limits(runtime.max_seq_len, config.max_tokens or runtime.max_seq_len)
        style = config.tool_call_style or detect_style(self.chat_template, self.model_type)
        if style not in STYLES[:2]:
            raise ValueError(f"unknown tool-call style {style!r} (hermes or llama3)")
        self.tool_style = style
        self.reasoning = config.reasoning == "on" or (
            config.reasoning == "auto" and reasoning_enabled(self.model_type, self.chat_template))
        self.structured = StructuredOutputs(tok, runtime.vocab_size, runtime.eos_token_ids())

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"The model '{name}' does not exist (this server serves '{self.config.model_name}').",
                           "model", "model_not_found")

    async def schema_processor(self, schema: dict, max_tokens: int, param: str):
        """A constrained-sampling processor for `schema` (compiled off the event loop: the first one
        indexes the vocabulary)."""
        from autodeploy.server.json_schema import UnsupportedSchemaError

        try:
            return await asyncio.to_thread(self.structured.processor, schema, max_tokens)
        except UnsupportedSchemaError as e:
            raise APIError(400, str(e), param, "unsupported_schema") from None
