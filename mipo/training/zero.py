r"""DeepSpeed ZeRO-3: the head step and the reference prepared the way ZeRO
needs. GPU only, and **not run by the project**: DeepSpeed is not installed on
its machines (``docs/guides/scaling.md`` gives the commands).

``accelerate launch --config_file docs/accelerate/zero3.yaml -m mipo.train ...``
turns ``accelerator.prepare`` into ``deepspeed.initialize``: the policy body
becomes an engine whose parameters are partitioned over the processes and
gathered around each submodule's own forward. Two things the trainer does fall
outside that:

* the head step reads the policy head's weight directly (the chunked log-prob
  path never calls the head module), so the weight is registered as an external
  parameter of the body: ZeRO gathers it for the body's forward and backward;
* the reference (``reference="copy"``) is wrapped in an engine of its own with
  the run's ZeRO-3 configuration minus the optimiser, scheduler and optimiser
  offload (an inference engine), so it is partitioned like the policy; its head,
  which the policy's head step reads after the reference forward, is gathered
  once into a frozen replicated copy.

Under ZeRO-1/2 only optimiser state and gradients are partitioned; a frozen
reference has neither and stays a plain replica on every GPU.
"""

import copy
from typing import Any

import torch
from torch import nn

from mipo.training.models import AbstractReference, FrozenCopyReference
from mipo.training.services.base import Models


def zero_stage(accelerator: Any) -> int | None:
    """The ZeRO stage of a run launched with a DeepSpeed config, else ``None``."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


class ZeroReference(AbstractReference):
    """A frozen reference partitioned by a ZeRO-3 inference engine, with its
    head gathered once (see the module docstring)."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        self.model = model
        self._head = head
        self.calls = 0

    def _reference_mode(self) -> Any:
        return torch.no_grad()

    @property
    def head(self) -> nn.Module:
        return self._head


def prepare_for_zero3(models: Models, accelerator: Any) -> Models:
    """``models`` with the policy head registered with the body's engine and a
    frozen copy reference partitioned by its own engine (module docstring)."""
    import dataclasses

    import deepspeed

    body = accelerator.unwrap_model(models.body)
    head = models.policy.get_output_embeddings()
    deepspeed.zero.register_external_parameter(body, head.weight)
    reference = models.reference
    if isinstance(reference, FrozenCopyReference):
        reference = _zero3_reference(reference.model, accelerator)
    return dataclasses.replace(models, reference=reference)


def _zero3_reference(model: nn.Module, accelerator: Any) -> ZeroReference:
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    hidden = getattr(model.config, "hidden_size", None)
    if hidden is not None:
        zero["reduce_bucket_size"] = hidden * hidden
        zero["stage3_param_persistence_threshold"] = 10 * hidden
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.module.eval()
    source = engine.module.get_output_embeddings()
    parts = [source.weight] + ([source.bias] if source.bias is not None else [])
    with deepspeed.zero.GatheredParameters(parts, modifier_rank=None):
        head = nn.Linear(
            source.weight.shape[1], source.weight.shape[0], bias=source.bias is not None
        )
        head.load_state_dict(
            {k: v.detach().clone() for k, v in source.state_dict().items()}
        )
    head.to(device=source.weight.device, dtype=source.weight.dtype)
    head.requires_grad_(False)
    return ZeroReference(engine.module, head)


__all__ = ["ZeroReference", "prepare_for_zero3", "zero_stage"]
