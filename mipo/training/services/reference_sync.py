r"""A reference that is updated during training (TR-DPO's soft update).

Every ``every`` optimiser steps the reference parameters move towards the
policy's,

$$ \theta_{ref} \leftarrow \alpha\,\theta + (1 - \alpha)\,\theta_{ref}, $$

after the optimiser step whose number (1-based) is a multiple of ``every``, as
TRL's ``SyncRefModelCallback`` does (its ``ref_model_mixup_alpha`` is $\alpha$,
its ``ref_model_sync_steps`` is ``every``). The reference is then training
state: its parameters are saved in every checkpoint and restored on resume.

References:
    Gorbatovski et al., "Learn Your Reference Model for Real Good Alignment",
    arXiv 2404.09656, Sec. 3 (soft update); TRL ``trainer/callbacks.py``.
"""

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mipo.services import AbstractServiceSpec, ReferenceSync
from mipo.training.config import TrainConfig
from mipo.training.services.base import Models, Service, ServiceSetup

REFERENCE_FILE = "reference_model.safetensors"
"""The moving reference's parameters inside a ``checkpoint-N`` directory."""


def sync_reference(policy: nn.Module, reference: nn.Module, alpha: float) -> None:
    r"""$\theta_{ref} \leftarrow \alpha\,\theta + (1 - \alpha)\,\theta_{ref}$ for
    every pair of parameters, in place and without gradient (tied parameters
    are updated once)."""
    pairs = list(zip(reference.parameters(), policy.parameters(), strict=True))
    with torch.no_grad():
        for target, source in pairs:
            target.mul_(1.0 - alpha).add_(source.detach().to(target.dtype), alpha=alpha)


class ReferenceSyncService(Service, spec=ReferenceSync):
    """Owns the reference's parameters as training state and updates them."""

    description = "moving reference"
    checkpoint_file = REFERENCE_FILE

    def __init__(self, spec: ReferenceSync, setup: ServiceSetup) -> None:
        super().__init__(spec, setup)
        reference = setup.models.reference
        if reference is None:
            raise ValueError("ReferenceSync: the run has no reference model to update")
        self.reference_model: nn.Module = reference.model

    @classmethod
    def check(cls, spec: AbstractServiceSpec, config: TrainConfig) -> None:  # noqa: ARG003
        if config.reference != "copy" or config.lora_rank > 0:
            raise ValueError(
                f"TrainConfig.sync_ref_model: the reference must be a full copy of "
                f"the policy (reference='copy', lora_rank=0), got "
                f"reference={config.reference!r}, lora_rank={config.lora_rank}"
            )

    def after_step(self, step: int, models: Models) -> None:
        if step % self.spec.every == 0:
            sync_reference(models.policy, self.reference_model, self.spec.alpha)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.reference_model.named_parameters())

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self.reference_model.named_parameters():
                parameter.copy_(state[name])


__all__ = ["REFERENCE_FILE", "ReferenceSyncService", "sync_reference"]
