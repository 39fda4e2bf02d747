"""The `autodeploy` command: one module per subcommand, errors as one line (traceback with --debug)."""

from __future__ import annotations

import logging
import sys
import traceback

import click
import typer
from rich.markup import escape

from autodeploy.cli import common

app = typer.Typer(
    name="autodeploy",
    help="Turn a Hugging Face causal LM into a fast inference runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    common.STATE.debug = common.STATE.debug or debug  # main() may have taken --debug from anywhere on the line
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from autodeploy.cli import bench, coverage, generate, inspect, optimize, recipes, serve

    app.command("optimize")(optimize.optimize_cmd)
    app.command("inspect")(inspect.inspect_cmd)
    app.command("generate")(generate.generate_cmd)
    app.add_typer(recipes.app, name="recipes")
    app.command("bench")(bench.bench_cmd)
    app.command("serve")(serve.serve_cmd)
    app.command("coverage")(coverage.coverage_cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    from autodeploy.errors import AutoDeployError

    args = list(argv if argv is not None else sys.argv[1:])
    common.STATE.argv = list(args)  # --world-size N re-launches this line as N ranks
    # --debug is accepted anywhere on the line, not only before the subcommand
    common.STATE.debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        # without standalone mode click returns a `typer.Exit(code)`'s code instead of raising it
        rc = app(args=args, standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        common.err_console().print("aborted")
        return 130
    except AutoDeployError as e:
        if common.STATE.debug:
            traceback.print_exc()
        common.err_console().print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:  # an internal bug: still one line unless --debug
        if common.STATE.debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        common.err_console().print(
            f"[red]internal error:[/red] {type(e).__name__}: {escape(first)} (rerun with --debug for the traceback)",
            highlight=False, soft_wrap=True,
        )
        return 2
    finally:
        from autodeploy import progress

        progress.disable_console()  # in-process callers (tests, notebooks) get the quiet library back


def run() -> None:
    code = main()
    if "autodeploy.distributed.launch" in sys.modules:  # only then can this be a rank of a sharded run
        from autodeploy.distributed.launch import exit_ranks

        exit_ranks(code)  # which leaves here (no NCCL teardown: it can hang after CUDA graphs)
    sys.exit(code)


if __name__ == "__main__":
    run()
