"""The ``minispec`` command line: parse options, call the library, map errors to exit codes.

Heavy libraries (torch, transformers, dvc) are imported inside the commands that need them, so
``minispec lint`` and ``minispec schema`` start fast.
"""

from __future__ import annotations

import functools
import json
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
@handle_errors
def lint(specs: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    """Validate SPECS against the schema and the semantic rules; list every problem as FILE:LINE:COL: key.path: message."""
    from minispec.spec.lint import lint_file

    clean = True
    for spec in specs:
        result = lint_file(spec, overrides)
        for problem in result.problems:
            click.echo(problem.format(), err=problem.severity == "error")
        if result.ok:
            click.echo(f"{spec}: ok")
        clean = clean and result.ok
    sys.exit(0 if clean else 2)


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
        output.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# pipeline

OUT_HELP = "Directory of the pipeline's dvc.yaml and params.yaml (and of every output): default the current directory."


def load_for_pipeline(spec: Path, overrides: tuple[str, ...]):
    """Lint the spec: print its warnings, stop on errors (exit 2)."""
    from minispec.errors import SpecError
    from minispec.spec.lint import lint_file

    result = lint_file(spec, overrides)
    for problem in result.problems:
        if problem.severity != "error":
            click.echo(problem.format(), err=True)
    if not result.ok:
        raise SpecError(result.problems)
    assert result.loaded is not None
    return result.loaded


@cli.command("compile")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "out_dir", default=".", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite a dvc.yaml (or params.yaml) that minispec did not generate, or that was edited by hand.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 with a diff when dvc.yaml/params.yaml differ from what SPEC compiles to.",
)
@handle_errors
def compile_command(
    spec: Path, out_dir: Path, overrides: tuple[str, ...], force: bool, check: bool
) -> None:
    """Compile SPEC into a DVC pipeline: dvc.yaml (one stage per step) and params.yaml (the resolved spec)."""
    from minispec.compile import compile_pipeline, drift, write_pipeline
    from minispec.errors import CompileError

    compiled = compile_pipeline(load_for_pipeline(spec, overrides), out_dir)
    if check:
        diffs = drift(compiled)
        if diffs:
            click.echo("".join(diffs), nl=False)
            raise CompileError(
                f"the pipeline in {compiled.out_dir} differs from what {spec} compiles to",
                hint=f"run `minispec compile {spec}"
                + (f" --out {out_dir}" if str(out_dir) != "." else "")
                + "` and commit the result",
            )
        click.echo(f"{compiled.out_dir / 'dvc.yaml'}: in sync with {spec}")
        return
    written = write_pipeline(compiled, force=force)
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo(f"{compiled.out_dir / 'dvc.yaml'}: up to date")
    click.echo(f"{len(compiled.stages)} stages: {', '.join(s.name for s in compiled.stages)}")


@cli.command("run")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "out_dir", default=".", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--stage",
    "stage_name",
    metavar="NAME",
    help="Run only this stage (e.g. prune@width) and the stages it needs.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Re-run the selected stages even when DVC finds them up to date, training from scratch (their checkpoints are discarded).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print every stage's command in order; write nothing, run nothing.",
)
@handle_errors
def run_command(
    spec: Path,
    out_dir: Path,
    overrides: tuple[str, ...],
    stage_name: str | None,
    force: bool,
    dry_run: bool,
) -> None:
    """Lint and compile SPEC, then reproduce its pipeline with DVC (only what changed runs)."""
    from minispec.pipeline import run

    loaded = load_for_pipeline(spec, overrides)
    run(loaded, out_dir, stage=stage_name, force=force, dry=dry_run, echo=click.echo)


@cli.command("status")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "out_dir", default=".", type=click.Path(file_okay=False, path_type=Path), help=OUT_HELP
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@handle_errors
def status_command(spec: Path, out_dir: Path, overrides: tuple[str, ...]) -> None:
    """Show every stage of SPEC's pipeline: up to date, changed (and what changed), stale or never run."""
    from minispec.pipeline import status

    report = status(load_for_pipeline(spec, overrides), out_dir)
    for line in report.lines():
        click.echo(line)


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
    cli(prog_name="minispec")
