r"""The training precision, applied the same way to every model forward of a run.

A run trains in ``fp32`` or in ``bf16`` mixed precision (``TrainConfig.precision``).
In ``bf16`` the policy keeps float32 master weights and its forwards run under
``torch.autocast(dtype=bfloat16)``: matrix products take bfloat16 operands, while
norms, softmaxes and the residual stream stay in float32. Every *other* forward
that feeds the loss or a reported number must run in that same precision, or
two numbers that should agree do not. At the start of training
$\log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)$ is exactly 0 only when the
reference is computed the way the policy is. So:

* the policy forward (the batch builder), the frozen reference, the precomputed
  reference cache, evaluation, gold-reward generation and the prior fit all run
  under :func:`autocast` of the run's precision;
* a ``bf16`` run holds the frozen reference's decoder matrices in bfloat16
  (:func:`cast_reference_matrices`). They are exactly the values autocast would
  cast the float32 weights to on every forward, so the reference computes the
  same numbers at half the memory and without re-casting. Its norms and
  embeddings stay in float32, as the policy's do, and it enters autocast
  itself (:class:`~mipo.training.models.FrozenCopyReference`);
* on CUDA, float32 matrix products use TensorFloat-32 (:func:`enable_tf32`,
  ``TrainConfig.tf32``), except inside the optimal-transport solver, which
  needs full float32 (:func:`mipo.sinkhorn.full_precision`).
"""

import contextlib

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")
"""The values of ``TrainConfig.precision``."""


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None``: plain float32)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"TrainConfig.precision: expected one of {', '.join(PRECISIONS)}, got "
            f"{precision!r}"
        )
    return torch.bfloat16 if precision == "bf16" else None


def autocast(
    precision: str, device: torch.device | str
) -> contextlib.AbstractContextManager[None]:
    """The context every forward of a ``precision`` run executes in: bfloat16
    autocast on ``device``'s type for ``bf16``, nothing for ``fp32`` (the same
    context accelerate's ``Accelerator.autocast`` gives the policy)."""
    dtype = compute_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def cast_reference_matrices(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold the weight of every ``nn.Linear`` of ``model``'s decoder body in
    ``dtype``, in place; the embeddings, the norms and the output head stay as
    they are. Under autocast to ``dtype`` the model then computes exactly what
    its float32 original computes (autocast rounds the weights the same way),
    without keeping or re-casting float32 copies of the matrices."""
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for module in decoder.modules():
        if isinstance(module, nn.Linear) and module is not head:
            module.to(dtype)
    return model


def enable_tf32(device: torch.device, enabled: bool = True) -> None:
    """On CUDA, let float32 matrix products and convolutions use TensorFloat-32
    (10-bit mantissa inputs, float32 accumulation); elsewhere nothing changes."""
    if device.type != "cuda":
        return
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


__all__ = [
    "PRECISIONS",
    "autocast",
    "cast_reference_matrices",
    "compute_dtype",
    "enable_tf32",
]
