"""The knowledge-distillation YAML that NeMo 2's ``gpt_train.py --kd_config`` reads.

NeMo loads it with ``yaml.safe_load`` into its ``DistillationConfig`` dataclass
(``nemo/collections/llm/modelopt/distill/utils.py``), whose fields are exactly:

    logit_layers              [student, teacher] module names of the logit layers
    intermediate_layer_pairs  [[student, teacher], ...] modules whose outputs get a cosine loss
    skip_lm_loss              train on the distillation loss alone (the tutorial's setting)
    kd_loss_scale             weight of the KD loss against the LM loss when the latter is kept

Any other key is a ``TypeError`` in NeMo, so only these are written. What NeMo computes: forward
KL(teacher ‖ student) on the logits at temperature 1; intermediate losses rescaled to the
magnitude of the logit loss; with ``skip_lm_loss: false`` the KD loss is rescaled to the LM
loss's magnitude and added times ``kd_loss_scale``. Spec settings NeMo cannot express are
rejected by :mod:`minispec.engines.nemo.lint` before anything runs, and again here.
"""

from __future__ import annotations

import io
from pathlib import Path

from minispec.errors import CompileError
from minispec.fsio import write_text_atomic
from minispec.spec.model import LossSpec, Spec

LOGIT_LAYER = "output_layer"  # Megatron-Core GPTModel's logit layer


def layer_module(layer: int) -> str:
    """A 1-indexed decoder layer → its Megatron-Core module (whose output is compared)."""
    return f"decoder.layers.{layer - 1}"


def unsupported(loss: LossSpec) -> list[tuple[tuple[str, ...], str]]:
    """(key path under ``distill.loss``, reason) for every setting NeMo 2's KD config cannot hold."""
    problems = []
    if loss.kind != "logits_kl":
        problems.append(
            (
                ("kind",),
                f"NeMo's distillation computes forward KL on the logits; '{loss.kind}' is not available",
            )
        )
    if loss.temperature != 1.0:
        problems.append(
            (("temperature",), "NeMo 2's kd_config has no temperature; its logit KL runs at T = 1")
        )
    if loss.alpha != 1.0:
        problems.append(
            (
                ("alpha",),
                "NeMo rescales the KD loss to the LM loss's magnitude instead of mixing by alpha; only alpha: 1.0 (KD loss alone) means the same",
            )
        )
    if loss.intermediate and loss.intermediate_weight != 1.0:
        problems.append(
            (
                ("intermediate_weight",),
                "NeMo balances intermediate losses against the logit loss itself; intermediate_weight cannot be set",
            )
        )
    return problems


def kd_config(spec: Spec) -> dict:
    """The KD config of ``spec.distill.loss`` as NeMo's ``DistillationConfig`` fields."""
    if spec.distill is None:
        raise CompileError("the spec has no distill block")
    loss = spec.distill.loss
    problems = unsupported(loss)
    if problems:
        path, reason = problems[0]
        raise CompileError(
            f"distill.loss.{'.'.join(path)}: {reason}", hint="run `minispec lint` for every problem"
        )
    return {
        "logit_layers": [LOGIT_LAYER, LOGIT_LAYER],
        "intermediate_layer_pairs": [
            [layer_module(p.student_layer), layer_module(p.teacher_layer)]
            for p in loss.intermediate
        ],
        "skip_lm_loss": True,
        "kd_loss_scale": 1.0,
    }


def write_kd_config(spec: Spec, path: str | Path) -> dict:
    """Write :func:`kd_config` as YAML (atomically) and return it."""
    from ruamel.yaml import YAML

    config = kd_config(spec)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    buffer = io.StringIO()
    buffer.write(
        "# knowledge-distillation config for NeMo 2 gpt_train.py --kd_config (written by minispec)\n"
    )
    yaml.dump(config, buffer)
    write_text_atomic(path, buffer.getvalue())
    return config
