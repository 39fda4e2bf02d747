"""`autodeploy generate`: text out through the optimized runtime, streamed as it is generated.

All prompts are submitted at once and run batched in flight; their completions print in order,
the first one live, token by token, and each later one from where the engine has got to.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common


def generate_cmd(
    source: str = common.SOURCE,
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt text (repeatable: one request each)."),
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Most new tokens per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below this fraction of the top probability."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help=">1 discourages repeated tokens."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop at this string (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling (reproducible output)."),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Apply the model's chat template to each prompt."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat prompts."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print text as it is generated."),
    dump_graphs: Optional[Path] = common.DUMP,
    world_size: Optional[int] = common.WORLD_SIZE,
) -> None:
    """Optimize the model, then generate a completion for each prompt."""
    from autodeploy import progress
    from autodeploy.api import optimize
    from autodeploy.runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, stop=list(stop or []), seed=seed)
    if common.spawned_ranks(world_size):
        return
    common.enable_progress()
    rt = optimize(source, recipe, overrides=common.rank_overrides(set_, world_size), dump_graphs=dump_graphs)
    if common.followed(rt):
        return
    use_chat = chat and rt.tokenizer is not None and getattr(rt.tokenizer, "chat_template", None)
    handles = []
    for p in prompt:
        if use_chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
            handles.append(rt.submit(rt.apply_chat_template(messages), params))
        else:
            handles.append(rt.submit(p, params))

    out = common.out_console()
    failed = 0
    for p, h in zip(prompt, handles):
        if len(prompt) > 1:
            out.print(f"[bold]> {p}[/bold]", highlight=False)
        if stream and rt.tokenizer is not None:
            for delta in h:
                sys.stdout.write(delta.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            result = h.request.output()
        else:
            with progress.step(f"Generating {len(prompt)} completion(s)"):
                result = h.result()
            if result.ok:
                text = result.text if rt.tokenizer is not None else " ".join(map(str, result.token_ids))
                out.print(text, highlight=False, markup=False)
        if not result.ok:
            failed += 1
            common.err_console().print(f"[red]error:[/red] {result.error}", highlight=False)
    if failed:
        raise typer.Exit(1)
