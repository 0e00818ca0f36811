"""FP8 matmuls for training (``resources.precision: fp8``), through torchao's float8 training.

Every ``nn.Linear`` of the decoder layers (attention q/k/v/o, MLP gate/up/down) becomes a
torchao ``Float8Linear``: its input and weight are cast to float8 e4m3 and the output's
gradient to e5m2, each with one dynamic scale per tensor (amax computed on the device, so no
host synchronisation and CUDA graphs still capture the step), and the matmuls run as FP8 GEMMs;
the weights themselves, the optimizer state and everything outside those matmuls stay as under
bf16 autocast. The LM head and the embeddings stay bf16: the logits feed the KL loss, whose
precision matters more than the LM head's share of the FLOPs. Layers whose in/out sizes are not
multiples of 16 (FP8 GEMMs need that) stay bf16 too.

On a GPU it needs compute capability 8.9 or newer (Ada, Hopper, Blackwell). On a CPU torchao
emulates the FP8 casts and GEMMs, slowly: enough to check an FP8 run's loss curve, not to train.
``Float8Linear`` subclasses ``nn.Linear`` and keeps its weight in high precision, so state
dicts and checkpoints are unchanged; :func:`restore_linears` swaps the plain layers back before
export.
"""

from __future__ import annotations

import torch
from torch import nn

from minispec.errors import StageError

FP8_MIN_CAPABILITY = (8, 9)
GEMM_MULTIPLE = 16  # torch._scaled_mm: both matrix sizes a multiple of 16


def _float8_api():
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        from torchao.float8.float8_linear import Float8Linear
    except ImportError as exc:
        raise StageError(
            f"resources.precision: fp8 needs torchao ({exc})",
            hint="pip install 'minispec[fp8]' (torchao), or use precision: bf16",
        ) from None
    return Float8LinearConfig, convert_to_float8_training, Float8Linear


def check_device(device: torch.device) -> None:
    """FP8 GEMMs exist from compute capability 8.9; older GPUs get a clear error."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise StageError(
            f"resources.precision: fp8 needs a GPU of compute capability 8.9 or newer "
            f"(Ada, Hopper, Blackwell); {torch.cuda.get_device_name(device)} is "
            f"{capability[0]}.{capability[1]}",
            hint="use precision: bf16 on this GPU",
        )


def convert_linears(model: nn.Module, device: torch.device) -> int:
    """Swap the decoder layers' linears of an HF causal LM for FP8 ones, in place.

    Returns how many were swapped (0 means no layer qualified: the run is plain bf16)."""
    check_device(device)
    config_cls, convert, float8_linear = _float8_api()

    def qualifies(module: nn.Module, fqn: str) -> bool:
        return (
            isinstance(module, nn.Linear)
            and fqn.startswith("model.layers.")  # HF causal LMs: model.layers.N.*
            and module.in_features % GEMM_MULTIPLE == 0
            and module.out_features % GEMM_MULTIPLE == 0
        )

    convert(model, module_filter_fn=qualifies, config=config_cls(emulate=device.type != "cuda"))
    return sum(isinstance(module, float8_linear) for module in model.modules())


def restore_linears(model: nn.Module) -> None:
    """Swap every ``Float8Linear`` back for a plain ``nn.Linear`` holding the same weight."""
    try:
        from torchao.float8.float8_linear import Float8Linear
    except ImportError:
        return  # nothing can have been converted
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Float8Linear):
                plain = nn.Linear(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    device="meta",
                )
                plain.weight = child.weight
                plain.bias = child.bias
                setattr(parent, name, plain)
