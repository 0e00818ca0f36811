"""The ``minispec`` command line: parse options, call the library, map errors to exit codes.

Heavy libraries (torch, transformers, dvc) are imported inside the commands that need them, so
``minispec lint`` and ``minispec schema`` start fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path

import click

from minispec import __version__
from minispec.errors import EXIT_FAILURE, MinispecError

SET_HELP = "Override a spec value: dotted KEY=VALUE, VALUE read as YAML (repeatable). Relative paths are relative to the current directory."


def handle_errors(func):
    """Print ``error: ...`` for a MinispecError and exit with its code; traceback only with --verbose."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        verbose = (ctx.find_root().obj or {}).get("verbose", False)
        try:
            return func(*args, **kwargs)
        except MinispecError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(exc.render(), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # an unexpected failure: say so briefly unless --verbose
            if verbose:
                raise
            click.echo(f"error: {type(exc).__name__}: {exc}\nhint: rerun with --verbose for the traceback", err=True)
            sys.exit(EXIT_FAILURE)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="minispec")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug output.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """minispec: one declarative spec → a versioned, re-runnable LLM pruning and distillation pipeline."""
    ctx.obj = {"verbose": verbose}


# --------------------------------------------------------------------------------------------
# spec


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.pass_context
@handle_errors
def lint(ctx: click.Context, specs: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    """Validate SPECS against the schema and the semantic rules.

    Every problem is listed on stderr as FILE:LINE:COL: key.path: message (overrides as
    `--set KEY=VALUE: key.path: message`); one status line per spec goes to stdout. Exit 0 when
    every spec is clean (warnings allowed), 2 otherwise.
    """
    from minispec.spec.lint import lint_file

    verbose = (ctx.find_root().obj or {}).get("verbose", False)
    clean = True
    for spec in specs:
        result = lint_file(spec, overrides)
        for problem in result.problems:
            click.echo(problem.format(), err=True)
        if verbose:
            _lint_details(spec, result)
        click.echo(f"{spec}: {_lint_status(result)}")
        clean = clean and result.ok
    sys.exit(0 if clean else 2)


def _lint_status(result) -> str:
    def count(items: list, noun: str) -> str:
        return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"

    if result.ok:
        return "ok" + (f" ({count(result.warnings, 'warning')})" if result.warnings else "")
    text = count(result.errors, "error")
    return text + (f", {count(result.warnings, 'warning')}" if result.warnings else "")


def _lint_details(spec: Path, result) -> None:
    """--verbose: what lint checked against, and which rules could not run."""
    if result.loaded is None:
        return
    info = result.loaded.cache.get("teacher")
    if info is not None and info.shapes is not None:
        click.echo(f"{spec}: teacher: {info.shapes.describe()}", err=True)
    skipped = result.loaded.cache.get("skipped_rules")
    if skipped:
        names = ", ".join(skipped)
        click.echo(
            f"{spec}: rules skipped (they read blocks with schema errors): {names}", err=True
        )


@cli.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the schema to this file instead of stdout.")
@handle_errors
def schema(output: Path | None) -> None:
    """Print the JSON Schema of spec files (generated from the spec models)."""
    from minispec.spec.model import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        from minispec.fsio import write_text_atomic

        write_text_atomic(output, text)


# --------------------------------------------------------------------------------------------
# stages (what dvc.yaml runs)


@cli.command(hidden=False)
@click.argument("name")
@click.argument("variant", required=False)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help="Resolved spec written by `minispec compile`.")
@handle_errors
def stage(name: str, variant: str | None, params_file: str) -> None:
    """Run one torch-engine stage (NAME, and VARIANT for prune/distill/export) in the current pipeline directory."""
    from minispec.engines.torch.stages import run_stage

    run_stage(name, variant, Path.cwd(), params_file)


def main() -> None:
    # minispec uses no pydantic plugins; looking for them scans every installed distribution's
    # entry points (~25 ms of the 0.5 s start-up budget). Set the variable to '' to look anyway.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    cli(prog_name="minispec")
