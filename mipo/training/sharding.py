r"""How the policy and the reference are spread over processes
(``TrainConfig.sharding``). A strategy is a value (:data:`SHARDINGS`); the
trainer asks it to shard the models before the optimiser is built and to
prepare them with the optimiser after.

:class:`Replicated` (``none``, ``ddp``) keeps a whole policy and a whole
reference on every process; with several processes accelerate wraps the
policy body in DDP, which averages the gradients. (Launched with a DeepSpeed
config, accelerate wraps it in a DeepSpeed engine instead; for ZeRO-3 the
reference then gets one too, :mod:`mipo.training.zero`.)

:class:`FullySharded` (``fsdp2``) uses torch's own ``fully_shard`` (FSDP2),
one code path on CPU (gloo) and GPU (NCCL):

* **Units.** Every decoder layer of the policy is a unit, gathered for its
  forward and released after it (``reshard_after_forward``), gathered again for
  its backward. The module the trainer calls
  (:class:`~mipo.training.batching.CausalLMBody`) is the root unit and holds the
  rest: the input embedding, the final norm and the head (one tensor when they
  are tied, as in SmolLM2). The root stays gathered from its forward to the end
  of the backward, where its gradients are reduce-scattered.
* **The reference** (``reference="copy"``) is sharded the same way, frozen and
  in eval mode, under a root that returns final hidden states. Its root stays
  gathered after the forward, because the policy's head step reads the
  reference head (log-probs and KLs of the same rows); both roots are released
  before every optimiser step. An adapter-off reference is the policy itself.
* **Calls that bypass the root.** Generation (TI-DPO's anchor, the learned
  prior's samples, gold answers), gradient attribution and evaluation call the
  causal LM, its decoder or its embeddings directly. A forward pre-hook on each
  of them gathers the root unit first, so every such call sees whole
  embeddings and head, and the layers gather themselves as usual. Every process
  must make the same calls: generation runs with ``synced_gpus`` (transformers
  turns it on for a module marked FSDP-managed), so a process whose sequences
  ended keeps stepping until all have.
* **Precision.** With ``precision="bf16"`` the units compute in bf16 and reduce
  gradients in fp32 (``MixedPrecisionPolicy``); the sharded master weights and
  the optimiser state stay fp32.

Parameters and optimiser state are ``DTensor`` shards: per process about
``1/W`` of them (``docs/guides/scaling.md`` has the arithmetic). Checkpoints of
a sharded run go through ``torch.distributed.checkpoint``
(:mod:`mipo.training.checkpoint`).
"""

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from mipo.training.batching import CausalLMBody
from mipo.training.config import TrainConfig
from mipo.training.logps import _unwrap_peft
from mipo.training.services.base import Models
from mipo.training.services.masks import decoder_layers
from mipo.training.zero import prepare_for_zero3, zero_stage


class Sharding(abc.ABC):
    """A way to place the models on the processes of a run."""

    shards_parameters: ClassVar[bool] = False
    """True when each process holds only a shard of the parameters (checkpoints
    then go through ``torch.distributed.checkpoint``)."""

    def check(self, config: TrainConfig) -> None:  # noqa: ARG002, B027
        """Refuse, before any model is loaded, settings it cannot serve."""

    def check_processes(self, processes: int) -> None:  # noqa: ARG002, B027
        """Refuse, before anything is loaded or written, a launch with this
        many processes."""

    def shard(self, accelerator: Any, models: Models, config: TrainConfig) -> Models:  # noqa: ARG002
        """The models placed for training, before the optimiser is built."""
        return models

    @abc.abstractmethod
    def prepare(
        self, accelerator: Any, models: Models, optimizer: Any
    ) -> tuple[Models, Any]:
        """The models with the module the trainer calls (``models.body``), and
        the optimiser, both ready for the fit loop."""


class Replicated(Sharding):
    """A whole policy and reference on every process (DDP across processes)."""

    def prepare(
        self, accelerator: Any, models: Models, optimizer: Any
    ) -> tuple[Models, Any]:
        body, optimizer = accelerator.prepare(CausalLMBody(models.policy), optimizer)
        policy = accelerator.unwrap_model(body).model
        models = dataclasses.replace(models, policy=policy, body=body)
        if zero_stage(accelerator) == 3:  # DeepSpeed launches only (mipo.training.zero)
            models = prepare_for_zero3(models, accelerator)
        return models, optimizer


class FullySharded(Sharding):
    """Policy and reference sharded per decoder layer with FSDP2 (module
    docstring)."""

    shards_parameters = True

    def check(self, config: TrainConfig) -> None:
        if config.save_only_model:
            raise ValueError(
                "TrainConfig.save_only_model: not supported with sharding='fsdp2' "
                "(its checkpoints are the shards of the trained state; the last one "
                "also holds the consolidated model)"
            )
        if config.sync_ref_model:
            raise ValueError(
                "TrainConfig.sync_ref_model: not supported with sharding='fsdp2' (the "
                "moving reference is checkpointed as whole weights); use "
                "sharding='ddp'"
            )

    def check_processes(self, processes: int) -> None:
        if processes < 2:
            raise ValueError(
                "TrainConfig.sharding='fsdp2': needs several processes (launch with "
                "`torchrun --nproc_per_node N -m mipo.train ...`); one process holds "
                "the whole model anyway, use sharding='none'"
            )

    def shard(self, accelerator: Any, models: Models, config: TrainConfig) -> Models:
        from torch.distributed.device_mesh import init_device_mesh

        world = accelerator.num_processes
        self.check_processes(world)
        mesh = init_device_mesh(accelerator.device.type, (world,))
        units = ShardUnits(mesh=mesh, precision=config.precision)
        body = units.shard(CausalLMBody(models.policy), models.policy)
        route_direct_calls(body, models.policy)
        reference = models.reference
        if reference is not None:
            reference = reference.shard(units.shard)
        models = dataclasses.replace(models, body=body, reference=reference)
        _initialise(models, accelerator.device)
        return models

    def prepare(
        self, accelerator: Any, models: Models, optimizer: Any
    ) -> tuple[Models, Any]:
        optimizer.register_step_pre_hook(lambda *_: release(models))
        return models, accelerator.prepare(optimizer)


SHARDINGS: dict[str, Sharding] = {
    "none": Replicated(),
    "ddp": Replicated(),
    "fsdp2": FullySharded(),
}
"""``TrainConfig.sharding`` -> its strategy."""


def sharding_of(config: TrainConfig) -> Sharding:
    """The strategy ``config.sharding`` names."""
    return SHARDINGS[config.sharding]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardUnits:
    """Applies FSDP2 to one causal LM: a unit per decoder layer, then the root.

    Args:
        mesh: the one-dimensional device mesh of all processes.
        precision: ``"bf16"`` computes in bf16 and reduces gradients in fp32.
    """

    mesh: Any
    precision: str = "fp32"

    def shard(self, root: nn.Module, causal_lm: nn.Module) -> Any:
        """``root`` (which contains ``causal_lm``) sharded in place and returned."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        extra: dict[str, Any] = {}
        if self.precision == "bf16":
            extra["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        for layer in decoder_layers(causal_lm):
            fully_shard(layer, mesh=self.mesh, reshard_after_forward=True, **extra)
        return fully_shard(root, mesh=self.mesh, **extra)


def route_direct_calls(body: Any, policy: nn.Module) -> None:
    """Gather ``body``'s root unit before any call that bypasses it: the causal
    LM (``generate``), its decoder, its input and output embeddings. The hook is
    a no-op while the root is gathered (inside the body's own forward)."""
    causal_lm = _unwrap_peft(policy)
    entries = {
        causal_lm,
        causal_lm.get_decoder(),
        causal_lm.get_input_embeddings(),
        causal_lm.get_output_embeddings(),
    }
    for module in entries:
        module.register_forward_pre_hook(lambda *_: body.unshard())
    # transformers generates with synced_gpus for a module it sees as FSDP's
    causal_lm._is_fsdp_managed_module = True


def release(models: Models) -> None:
    """Free the gathered root units of the policy and the reference (before
    an optimiser step, after evaluation, before a checkpoint)."""
    body = models.body
    if hasattr(body, "reshard"):
        body.reshard()
    if models.reference is not None:
        models.reference.release()


def _initialise(models: Models, device: torch.device) -> None:
    """One two-token forward through each root, so FSDP sees the roots first
    (it takes the first unit to run as the root), then release them."""
    tokens = torch.zeros((1, 2), dtype=torch.long, device=device)
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        models.body(tokens, mask, tokens)
        if models.reference is not None:
            calls = models.reference.calls
            models.reference.hidden_states(tokens, mask)
            models.reference.calls = calls
    release(models)


def local_bytes(tensors: Any) -> int:
    """Bytes this process holds of ``tensors`` (a ``DTensor`` counts its local
    shard)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


__all__ = [
    "SHARDINGS",
    "FullySharded",
    "Replicated",
    "ShardUnits",
    "Sharding",
    "local_bytes",
    "release",
    "route_direct_calls",
    "sharding_of",
]
