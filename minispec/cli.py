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


# --------------------------------------------------------------------------------------------
# nemo engine helpers (what an engine: nemo dvc.yaml runs around NeMo's own scripts)

PARAMS_HELP = "Resolved spec written by `minispec compile`."


@cli.group()
def nemo() -> None:
    """Helpers of the nemo engine's stages (run from the compiled pipeline's directory)."""


@nemo.command("logs")
@click.argument("stage_name", metavar="STAGE")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_logs(stage_name: str, params_file: str) -> None:
    """Turn NeMo's TensorBoard events of STAGE (finetune, distill@VARIANT) into loss curves and metrics."""
    from minispec.engines.nemo.logs import convert_stage
    from minispec.engines.torch.stages import load_params

    spec = load_params(Path.cwd(), params_file)
    schedule = spec.finetune if stage_name == "finetune" else spec.distill
    if schedule is None or not (stage_name == "finetune" or stage_name.startswith("distill@")):
        raise MinispecError(f"'{stage_name}' is not a training stage of this spec", hint="use finetune or distill@VARIANT")
    metrics = convert_stage(stage_name, Path.cwd(), global_batch_size=schedule.global_batch_size, seq_length=spec.data.seq_length)
    click.echo(json.dumps(metrics, indent=2))


@nemo.command("publish")
@click.option("--flavor", type=click.Choice(["nemo2", "legacy"]), required=True, help="Checkpoint format.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@handle_errors
def nemo_publish(flavor: str, source: Path, target: Path) -> None:
    """Put the finished NeMo checkpoint at or under SOURCE into the model directory TARGET atomically."""
    from minispec.engines.nemo.logs import publish

    click.echo(f"published {publish(source, target, flavor)}")


@nemo.command("kd-config")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True, help="YAML file to write.")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_kd_config(output: Path, params_file: str) -> None:
    """Write the NeMo 2 knowledge-distillation config (gpt_train.py --kd_config) from distill.loss."""
    from minispec.engines.nemo.kd import write_kd_config
    from minispec.engines.torch.stages import load_params

    write_kd_config(load_params(Path.cwd(), params_file), output)
    click.echo(f"wrote {output}")


@nemo.command("evaluate-logs")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_evaluate_logs(params_file: str) -> None:
    """Evaluation of flavor legacy: the validation losses NeMo measured while training."""
    from minispec.engines.nemo.evaluate import run_legacy
    from minispec.engines.torch.stages import load_params

    run_legacy(load_params(Path.cwd(), params_file), Path.cwd())


def main() -> None:
    cli(prog_name="minispec")
