"""Lint rules of ``engine: torch``: what the embedded engine cannot run, found before anything
runs. The spec's own rules (:mod:`minispec.spec.rules`) run first; these run for torch specs."""

from __future__ import annotations

from collections.abc import Iterator

from minispec.engines import reads
from minispec.errors import Problem

# The torch engine's architectures (minispec.engines.torch.modeling.SUPPORTED_MODEL_TYPES),
# repeated here so that lint does not import the engine's modules (tempfile, shutil, ...);
# tests/spec/test_rules.py fails when the two differ.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@reads("teacher", "engine")
def teacher_architecture(loaded) -> Iterator[Problem]:
    from minispec.spec.rules import teacher_shapes

    shapes = teacher_shapes(loaded)
    if shapes is None or shapes.model_type is None:
        return
    if shapes.model_type not in SUPPORTED_MODEL_TYPES:
        yield loaded.locate(
            ("teacher", "source"),
            f"the torch engine does not support '{shapes.model_type}' models ({shapes.origin})",
            hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama-family decoders)",
        )


@reads("resources", "engine")
def parallelism(loaded) -> Iterator[Problem]:
    """One node, data parallelism only (FSDP2 or DDP)."""
    res = loaded.spec.resources
    base = ("resources",)
    if res.nodes > 1:
        yield loaded.locate(
            base + ("nodes",),
            f"the torch engine runs on one node (got nodes: {res.nodes})",
            hint="use engine: nemo to run on several nodes",
        )
    for key, what in (("tensor_parallel", "tensor"), ("pipeline_parallel", "pipeline")):
        if getattr(res, key) > 1:
            yield loaded.locate(
                base + (key,),
                f"the torch engine has no {what} parallelism (got {key}: {getattr(res, key)})",
                hint="it spreads a model over the devices with resources.strategy (fsdp or ddp); use engine: nemo for tensor/pipeline parallelism",
            )


@reads("resources", "engine")
def fp8_on_cpu(loaded) -> Iterator[Problem]:
    """FP8 GEMMs need a GPU; on a CPU torchao emulates them (to check numerics, not to train)."""
    res = loaded.spec.resources
    if res.precision == "fp8" and res.accelerator == "cpu":
        yield loaded.locate(
            ("resources", "precision"),
            "precision: fp8 on a CPU emulates the FP8 matmuls: slower than fp32, useful only to check an FP8 run's numerics",
            hint="run it on a GPU of compute capability 8.9+ (Ada, Hopper, Blackwell), or use precision: fp32 on the CPU",
            severity="warning",
        )


@reads("resources", "engine")
def fp8_without_compile(loaded) -> Iterator[Problem]:
    """Uncompiled FP8 is slower than bf16: each FP8 linear is a dozen small cast and scale
    kernels that only torch.compile fuses (one H200: 0.55–0.60× the plain bf16 loop without
    compile, 1.40–1.43× with it; benchmarks/RESULTS.md, issue 11)."""
    res = loaded.spec.resources
    if res.precision == "fp8" and res.accelerator != "cpu" and res.compile != "on":
        yield loaded.locate(
            ("resources", "precision"),
            "precision: fp8 without resources.compile: on is slower than bf16 (its casts run "
            "as separate kernels)",
            hint="set resources.compile: on with precision: fp8, or use precision: bf16",
            severity="warning",
        )


@reads("engine")
def nemo_block(loaded) -> Iterator[Problem]:
    if loaded.raw.get("nemo") is not None:
        yield loaded.locate(
            ("nemo",),
            "the nemo block is ignored with engine: torch",
            hint="set engine: nemo to use it, or remove the block",
            severity="warning",
        )


@reads("engine", "teacher", "resources", "nemo", "finetune", "prune", "distill", "export", "data")
def parameter_budget(loaded) -> Iterator[Problem]:
    """A parameter budget (``target_params``) is flavor bridge's: refused here."""
    from minispec.engines.nemo.bridge_lint import check_any_engine

    yield from check_any_engine(loaded)


RULES = (
    teacher_architecture,
    parallelism,
    fp8_on_cpu,
    fp8_without_compile,
    nemo_block,
    parameter_budget,
)
