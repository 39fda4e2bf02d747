"""`autodeploy serve`: the optimized runtime behind an OpenAI-compatible HTTP server.

Binds 127.0.0.1 unless --host says otherwise; with --api-key (or $AUTODEPLOY_API_KEY) every path
but /health needs `Authorization: Bearer <key>`, and exposing the server beyond loopback without
one logs a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common

log = logging.getLogger(__name__)


def serve_cmd(
    source: str = common.SOURCE,
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes the server)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="AUTODEPLOY_API_KEY",
                                          help="Require 'Authorization: Bearer <key>' on every path but /health."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="Model id clients send (default: the source)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens-limit", min=1,
                                             help="Most new tokens one request may ask for (default: the context)."),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="Largest request body accepted."),
    reasoning: str = typer.Option("auto", "--reasoning", help="Split <think> blocks: auto (per model family), on, off."),
    tool_call_style: Optional[str] = typer.Option(None, "--tool-call-style",
                                                  help="hermes or llama3 (default: from the chat template)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
    dump_graphs: Optional[Path] = common.DUMP,
    world_size: Optional[int] = common.WORLD_SIZE,
) -> None:
    """Optimize the model, then serve /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics."""
    import uvicorn

    from autodeploy.api import optimize
    from autodeploy.errors import RecipeError
    from autodeploy.server.app import ServerConfig, create_app

    if reasoning not in ("auto", "on", "off"):
        raise RecipeError(f"--reasoning {reasoning!r}: expected auto, on or off")
    if tool_call_style not in (None, "hermes", "llama3"):
        raise RecipeError(f"--tool-call-style {tool_call_style!r}: expected hermes or llama3")
    if common.spawned_ranks(world_size):
        return
    common.enable_progress()
    rt = optimize(source, recipe, overrides=common.rank_overrides(set_, world_size), dump_graphs=dump_graphs)
    if common.followed(rt):  # rank 0 serves; the others run its steps
        return
    config = ServerConfig(model_name=served_model_name or source, api_key=api_key or None,
                          max_body_bytes=int(max_body_mb * 1024 * 1024), max_tokens=max_tokens,
                          reasoning=reasoning, tool_call_style=tool_call_style)
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", host)
    app = create_app(rt, config)
    common.err_console().print(f"serving [bold]{config.model_name}[/bold] on http://{host}:{port}/v1", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
