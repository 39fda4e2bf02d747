"""`autodeploy generate`: text out through the optimized runtime."""

from __future__ import annotations

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
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling (reproducible output)."),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Apply the model's chat template to each prompt."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat prompts."),
    dump_graphs: Optional[Path] = common.DUMP,
) -> None:
    """Optimize the model, then generate a completion for each prompt."""
    from autodeploy import progress
    from autodeploy.api import optimize
    from autodeploy.runtime.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    progress.enable_console(common.err_console())
    rt = optimize(source, recipe, overrides=set_ or [], dump_graphs=dump_graphs)
    use_chat = chat and rt.tokenizer is not None and getattr(rt.tokenizer, "chat_template", None)
    inputs = []
    for p in prompt:
        if use_chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
            inputs.append(rt.apply_chat_template(messages))
        else:
            inputs.append(p)
    with progress.step(f"Generating {len(inputs)} completion(s)"):
        outs = rt.generate(inputs, params)
    out = common.out_console()
    failed = 0
    for p, o in zip(prompt, outs):
        if len(prompt) > 1:
            out.print(f"[bold]> {p}[/bold]", highlight=False)
        if o.error:
            failed += 1
            common.err_console().print(f"[red]error:[/red] {o.error}", highlight=False)
        else:
            out.print(o.text if rt.tokenizer is not None else " ".join(map(str, o.token_ids)), highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)
