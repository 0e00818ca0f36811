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
        except BrokenPipeError:
            reader_went_away()
        except Exception as exc:  # an unexpected failure: say so briefly unless --verbose
            if verbose:
                raise
            click.echo(
                f"error: {type(exc).__name__}: {exc}\nhint: rerun with --verbose for the traceback",
                err=True,
            )
            sys.exit(EXIT_FAILURE)

    return wrapper


def reader_went_away() -> None:
    """`minispec status | head`: the reader closed the pipe; stop quietly, as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the flush at exit must not fail again
    sys.exit(128 + 13)  # what a shell shows for a process ended by SIGPIPE


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
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the schema to this file instead of stdout.",
)
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
@click.option(
    "--warm-start/--no-warm-start",
    default=True,
    show_default=True,
    help="Start torch stages as forks of one process that imported torch and transformers once (saves seconds per stage); --no-warm-start runs each in a fresh process.",
)
@handle_errors
def run_command(
    spec: Path,
    out_dir: Path,
    overrides: tuple[str, ...],
    stage_name: str | None,
    force: bool,
    dry_run: bool,
    warm_start: bool,
) -> None:
    """Lint and compile SPEC, then reproduce its pipeline with DVC (only what changed runs)."""
    from minispec.pipeline import run

    loaded = load_for_pipeline(spec, overrides)
    verbose = (click.get_current_context().find_root().obj or {}).get("verbose", False)
    run(
        loaded,
        out_dir,
        stage=stage_name,
        force=force,
        dry=dry_run,
        echo=click.echo,
        verbose=verbose,
        warm_start=warm_start,
    )


@cli.command("plan")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--device",
    "device_name",
    type=click.Choice(["cpu", "h100", "h200", "a100"]),
    default="cpu",
    show_default=True,
    help="Device preset: memory, matmul rate and training efficiency.",
)
@click.option(
    "--matmul-tflops",
    type=float,
    default=None,
    help="Use this dense matmul rate (TFLOP/s) instead of the preset's.",
)
@click.option(
    "--measure", is_flag=True, help="Measure this machine's matmul rate first (imports torch)."
)
@click.option(
    "--memory-gib",
    type=float,
    default=None,
    help="Device memory in GiB instead of the preset's (host memory for cpu).",
)
@click.option(
    "--activation-checkpointing",
    is_flag=True,
    help="Estimate with activation checkpointing (each layer's input kept, the rest recomputed), as `resources.activation_checkpointing: true` does.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@handle_errors
def plan_command(
    spec: Path,
    device_name: str,
    matmul_tflops: float | None,
    measure: bool,
    memory_gib: float | None,
    activation_checkpointing: bool,
    overrides: tuple[str, ...],
) -> None:
    """Estimate every stage's peak memory, FLOPs, time and disk before running SPEC; warn when a stage will not fit."""
    from minispec.errors import MinispecError
    from minispec.plan import assumptions, device_from, measure_matmul_tflops, plan_spec, render
    from minispec.spec.rules import teacher_shapes

    loaded = load_for_pipeline(spec, overrides)
    shapes = teacher_shapes(loaded)
    if shapes is None or shapes.num_hidden_layers is None or shapes.vocab_size is None:
        raise MinispecError(
            f"{spec}: the teacher's shapes are unknown, so there is nothing to estimate from",
            hint="plan reads the teacher's config.json or GGUF metadata, as lint does: make it readable here",
        )
    if measure:
        matmul_tflops = measure_matmul_tflops(gpu=device_name != "cpu")
    device = device_from(device_name, matmul_tflops, memory_gib)
    checkpointing = activation_checkpointing or loaded.spec.resources.activation_checkpointing
    plans = plan_spec(loaded.spec, shapes, device, checkpointing=checkpointing)
    for line in render(plans, device, assumptions(loaded.spec, device)):
        click.echo(line)


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
@click.option(
    "--params",
    "params_file",
    default="params.yaml",
    show_default=True,
    help="Resolved spec written by `minispec compile`.",
)
@handle_errors
def stage(name: str, variant: str | None, params_file: str) -> None:
    """Run one torch-engine stage (NAME, and VARIANT for prune/distill/export) in the current pipeline directory."""
    from minispec.engines.torch.warm import run_in_server

    code = run_in_server(name, sys.argv[1:])  # within `minispec run`: a fork of a warm process
    if code is not None:
        sys.exit(code)
    from minispec.stage import run_stage

    run_stage(name, variant, Path.cwd(), params_file)


@cli.command("stage-server", hidden=True)
@click.argument("socket_path", type=click.Path(path_type=Path))
@click.argument("owner", type=int)
def stage_server_command(socket_path: Path, owner: int) -> None:
    """The warm process of `minispec run` (started by its first torch stage): forks one child per `minispec stage`."""
    from minispec.engines.torch.warm import serve

    def run_cli(argv: list[str]) -> int:
        cli.main(args=argv, prog_name="minispec", standalone_mode=True)
        return 0

    serve(socket_path, owner, run_cli)


# --------------------------------------------------------------------------------------------
# nemo engine helpers (what an engine: nemo dvc.yaml runs around NeMo's own scripts)

PARAMS_HELP = "Resolved spec written by `minispec compile`."


@cli.group()
def nemo() -> None:
    """Helpers of the nemo engine's stages (run from the compiled pipeline's directory)."""


@nemo.command("logs")
@click.argument("stage_name", metavar="STAGE")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@click.option(
    "--flavor",
    type=click.Choice(["nemo2", "legacy", "bridge"]),
    default="nemo2",
    show_default=True,
    help="Whose TensorBoard tags to read: NeMo's (nemo2, legacy) or Megatron-Bridge's (bridge).",
)
@handle_errors
def nemo_logs(stage_name: str, params_file: str, flavor: str) -> None:
    """Turn NeMo's TensorBoard events of STAGE (finetune, distill@VARIANT) into loss curves and metrics."""
    from minispec.engines.nemo.bridge_runtime import BRIDGE_TAGS
    from minispec.engines.nemo.logs import NEMO_TAGS, convert_stage
    from minispec.params import load_params

    spec = load_params(Path.cwd(), params_file)
    schedule = spec.finetune if stage_name == "finetune" else spec.distill
    if schedule is None or not (stage_name == "finetune" or stage_name.startswith("distill@")):
        raise MinispecError(
            f"'{stage_name}' is not a training stage of this spec",
            hint="use finetune or distill@VARIANT",
        )
    metrics = convert_stage(
        stage_name,
        Path.cwd(),
        global_batch_size=schedule.global_batch_size,
        seq_length=spec.data.seq_length,
        tags=BRIDGE_TAGS if flavor == "bridge" else NEMO_TAGS,
    )
    click.echo(json.dumps(metrics, indent=2))


@nemo.command("publish")
@click.option(
    "--flavor",
    type=click.Choice(["nemo2", "legacy", "bridge"]),
    required=True,
    help="Checkpoint format (bridge: a Hugging Face directory).",
)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@handle_errors
def nemo_publish(flavor: str, source: Path, target: Path) -> None:
    """Put the finished NeMo checkpoint at or under SOURCE into the model directory TARGET atomically."""
    from minispec.engines.nemo.logs import publish

    click.echo(f"published {publish(source, target, flavor)}")


@nemo.command("kd-config")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="YAML file to write.",
)
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_kd_config(output: Path, params_file: str) -> None:
    """Write the NeMo 2 knowledge-distillation config (gpt_train.py --kd_config) from distill.loss."""
    from minispec.engines.nemo.kd import write_kd_config
    from minispec.params import load_params

    write_kd_config(load_params(Path.cwd(), params_file), output)
    click.echo(f"wrote {output}")


@nemo.command("bridge-prune-metrics")
@click.argument("variant")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_bridge_prune_metrics(variant: str, params_file: str) -> None:
    """Flavor bridge: sizes and validation loss of the student prune_minitron.py wrote for VARIANT."""
    from minispec.engines.nemo.bridge_runtime import write_prune_metrics
    from minispec.params import load_params

    metrics = write_prune_metrics(load_params(Path.cwd(), params_file), variant, Path.cwd())
    click.echo(json.dumps(metrics, indent=2))


@nemo.command("evaluate-logs")
@click.option("--params", "params_file", default="params.yaml", show_default=True, help=PARAMS_HELP)
@handle_errors
def nemo_evaluate_logs(params_file: str) -> None:
    """Evaluation of flavor legacy: the validation losses NeMo measured while training."""
    from minispec.engines.nemo.evaluate import run_legacy
    from minispec.params import load_params

    run_legacy(load_params(Path.cwd(), params_file), Path.cwd())


# reports and bundles


@cli.command()
@click.argument(
    "directory",
    required=False,
    default=".",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the report to this directory (default: DIR/reports).",
)
@handle_errors
def report(directory: Path, output: Path | None) -> None:
    """Plots, report.md and a self-contained report.html of the run in DIRECTORY (where dvc.yaml is; default: the current directory)."""
    from minispec.report.build import report_directory

    result = report_directory(directory, output)
    click.echo(f"wrote {result.markdown}, {result.html} and {len(result.figures)} figures")
    for note in result.data.notes:
        click.echo(f"note: {note}", err=True)


@cli.group()
def bundle() -> None:
    """Reproducibility bundles: pack a run, check it, rerun it."""


@bundle.command("create")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Bundle file to write (.tar.gz).",
)
@click.option(
    "--with-artifacts",
    is_flag=True,
    help="Also pack every DVC output (models, data, importance scores).",
)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The spec the pipeline was compiled from (default: the one spec file in the pipeline directory, if any).",
)
@click.option(
    "-C",
    "--dir",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Pipeline directory (where dvc.yaml and dvc.lock are).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing bundle file (never a file of the pipeline itself).",
)
@handle_errors
def bundle_create(
    output: Path, with_artifacts: bool, spec_file: Path | None, directory: Path, force: bool
) -> None:
    """Pack spec, pipeline, dvc.lock, environment, metrics, plots and logs with a sha256 manifest."""
    from minispec.bundle import create_bundle

    summary = create_bundle(
        directory, output, with_artifacts=with_artifacts, spec_file=spec_file, force=force
    )
    click.echo(f"wrote {summary.path} ({summary.files} files, {summary.bytes:,} bytes)")
    if summary.spec_file is None:
        click.echo(
            "note: no spec file found in the pipeline directory; pass --spec to include the spec as written",
            err=True,
        )
    if summary.outs:
        click.echo(f"DVC outputs packed: {', '.join(summary.outs)}")


@bundle.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def bundle_verify(file: Path) -> None:
    """Check every file's sha256 and every bundled artifact against the bundle's dvc.lock."""
    from minispec.bundle import verify_bundle

    result = verify_bundle(file).raise_for_problems()
    click.echo(
        f"{file}: ok ({result.files_checked} files match the manifest, {result.outs_checked} DVC outputs and inputs match dvc.lock)"
    )


@bundle.command("reproduce")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fresh directory to unpack and rerun in (default: a new temporary directory).",
)
@click.option(
    "--rtol",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Relative tolerance for metrics (GPU runs are not bit-exact: try 1e-3).",
)
@click.option(
    "--atol",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Absolute tolerance for metrics.",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow a bundle whose spec sets teacher.trust_remote_code: true (runs the teacher repository's code).",
)
@handle_errors
def bundle_reproduce(
    file: Path, directory: Path | None, rtol: float, atol: float, trust_remote_code: bool
) -> None:
    """Verify FILE, rerun its pipeline in a fresh workspace and diff the metrics (exit 1 when they differ)."""
    from minispec.bundle.reproduce import format_result, reproduce_bundle

    ctx = click.get_current_context()
    result = reproduce_bundle(
        file, directory, rtol=rtol, atol=atol, trust_remote_code=trust_remote_code
    )
    click.echo(format_result(result, verbose=(ctx.find_root().obj or {}).get("verbose", False)))
    if not result.ok:
        click.echo(
            "error: the reproduced metrics differ from the bundle's beyond the tolerance", err=True
        )
        sys.exit(EXIT_FAILURE)
    click.echo("reproduced: metrics match the bundle")


def main() -> None:
    # minispec uses no pydantic plugins; looking for them scans every installed distribution's
    # entry points (~25 ms of the 0.5 s start-up budget). Set the variable to '' to look anyway.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    cli(prog_name="minispec")
