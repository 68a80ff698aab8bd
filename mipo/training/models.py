"""Load the policy, the tokenizer and the reference a run needs.

The reference is built only when the objective's needs read it (the table of
needs, :data:`mipo.needs.NEEDS`); a reference-free
objective (SimPO) never loads one. Three kinds (``TrainConfig.reference``):

* ``copy``: a frozen deep copy of the initial policy, in eval mode;
* ``adapter_off``: the LoRA policy itself with its adapters disabled (no copy);
* ``precomputed``: no reference model during training; its token log-probs are
  computed once and read from a cache
  (:mod:`mipo.training.services.reference_cache`).

Dropout is disabled in policy and reference, as in TRL's ``disable_dropout``:
with dropout the implicit reward of a pair would be random.
"""

import abc
import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mipo.needs import Need
from mipo.training.attention import check_packable, resolve_attention
from mipo.training.config import TrainConfig
from mipo.training.logps import final_hidden_states
from mipo.training.precision import autocast, cast_reference_matrices, compute_dtype


def reads_reference(needs: frozenset[Need]) -> bool:
    """True when computing ``needs`` runs the reference model (table of needs)."""
    return any(need.info.reads_reference for need in needs)


def resolve_model_path(name: str) -> str:
    """``"smollm2"`` -> the converted local directory; a local path as is; a hub
    name only when online."""
    if name == "smollm2":
        from mipo.training.assets import smollm2_dir

        return str(smollm2_dir())
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"--train.model={name}: no such directory (give a Hugging Face model "
            f"directory, or 'smollm2')"
        )
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"TrainConfig.model={name!r}: {path} has no config.json (expected a "
                f"Hugging Face model directory)"
            )
        return str(path)
    return _hub_model(name)


def _hub_model(name: str) -> str:
    """A hub model name as is when the hub can be reached; offline (or with
    ``HF_HUB_OFFLINE`` set), its snapshot in the local Hugging Face cache; else
    one clear error, at once rather than after transformers' retries."""
    from mipo.data.datasets_io import hub_reachable

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if not offline and hub_reachable():
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or not a valid repository name
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise FileNotFoundError(
            f"TrainConfig.model={name!r}: not a local directory nor in the Hugging "
            f"Face cache, and {why}; give a model directory, or 'smollm2' (the "
            "shipped SmolLM2-135M-Instruct)"
        ) from None


def load_tokenizer(path: str) -> Any:
    """The tokenizer, with EOS required and padding on the right."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos_token")
    if tokenizer.pad_token_id is None:
        # Padding positions are masked everywhere, so reusing EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (modules and config attributes)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attribute in ("attention_dropout", "dropout", "hidden_dropout"):
            value = getattr(module, attribute, None)
            if isinstance(value, float):
                setattr(module, attribute, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for attribute in (
            "attention_dropout",
            "hidden_dropout",
            "resid_pdrop",
            "embd_pdrop",
            "attn_pdrop",
            "dropout",
        ):
            if isinstance(getattr(config, attribute, None), float):
                setattr(config, attribute, 0.0)


def load_causal_lm(path: str, attn_implementation: str | None = None) -> nn.Module:
    """A causal LM in float32 (mixed precision is accelerate's job), dropout off,
    with ``attn_implementation`` (``None``: transformers' default)."""
    from transformers import AutoModelForCausalLM

    kwargs = (
        {}
        if attn_implementation is None
        else {"attn_implementation": attn_implementation}
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    # A GGUF-converted config may still carry its quantisation block, which makes
    # Hugging Face tooling refuse to fine-tune.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    disable_dropout(model)
    return model


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    alpha: float = 0.0,
    dropout: float = 0.0,
    target_modules: str = "all-linear",
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters of ``rank`` (scale ``alpha / rank``;
    ``alpha`` 0 means ``2 * rank``) on ``target_modules`` (comma-separated names,
    or ``all-linear``), with ``dropout`` on the adapters' input."""
    from peft import LoraConfig, get_peft_model

    names = [name.strip() for name in target_modules.split(",") if name.strip()]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=dropout,
        target_modules="all-linear" if names == ["all-linear"] else names,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(
            f"TrainConfig.lora_target_modules={target_modules!r}: {error}"
        ) from None


def enable_gradient_checkpointing(policy: nn.Module) -> None:
    """Recompute the policy's activations in the backward pass (non-reentrant,
    so frozen embeddings under LoRA still pass gradients to the adapters)."""
    if not getattr(policy, "supports_gradient_checkpointing", True):
        raise ValueError(
            f"TrainConfig.gradient_checkpointing: {type(policy).__name__} does not "
            f"support it"
        )
    policy.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    if hasattr(policy, "config"):
        policy.config.use_cache = False


class AbstractReference(abc.ABC):
    """A reference model as the forward pass sees it: final hidden states and head,
    never with gradient, always in the run's precision (``precision``: it enters
    :func:`mipo.training.precision.autocast` itself, whoever calls it).
    Subclasses say how the reference forward runs."""

    model: nn.Module
    calls: int = 0
    precision: str = "fp32"

    @abc.abstractmethod
    def _reference_mode(self) -> contextlib.AbstractContextManager[None]:
        """The context in which ``model`` computes the reference (no gradient)."""

    def _in_precision(self) -> contextlib.AbstractContextManager[None]:
        device = next(self.model.parameters()).device
        return autocast(self.precision, device)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        *,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states ``[batch, length, hidden]`` (no gradient);
        ``position_ids`` with ``attention_mask=None`` for a packed row."""
        self.calls += 1
        with self._reference_mode(), self._in_precision():
            return final_hidden_states(
                self.model, input_ids, attention_mask, position_ids=position_ids
            )

    @property
    def head(self) -> nn.Module:
        """The output embedding (LoRA on "all-linear" leaves it alone, so an
        adapter-off reference shares the base's)."""
        return self.model.get_output_embeddings()

    def to(self, device: torch.device) -> "AbstractReference":  # noqa: ARG002
        """Move to ``device`` (no-op for references that share the policy)."""
        return self

    def shard(
        self,
        shard_units: Callable[[nn.Module, nn.Module], nn.Module],  # noqa: ARG002
    ) -> "AbstractReference":
        """This reference with its own parameters sharded across processes by
        ``shard_units(root, causal_lm)`` (:mod:`mipo.training.sharding`). A
        reference without parameters of its own (the adapter-off policy) is
        sharded with the policy and returns itself."""
        return self

    def release(self) -> None:  # noqa: B027 (a no-op unless sharded)
        """Free what a sharded reference gathered (no-op otherwise)."""


class FrozenCopyReference(AbstractReference):
    """A frozen deep copy of the initial policy; in a ``bf16`` run its decoder
    matrices are held in bfloat16 (:func:`~mipo.training.precision.cast_reference_matrices`)."""

    def __init__(self, model: nn.Module, *, precision: str = "fp32") -> None:
        self.model = model
        self.calls = 0
        self.precision = precision

    def _reference_mode(self) -> contextlib.AbstractContextManager[None]:
        return torch.no_grad()

    def to(self, device: torch.device) -> "FrozenCopyReference":
        self.model.to(device)
        return self

    def shard(
        self, shard_units: Callable[[nn.Module, nn.Module], nn.Module]
    ) -> "ShardedCopyReference":
        return ShardedCopyReference(shard_units(ReferenceTrunk(self.model), self.model))


class ReferenceTrunk(nn.Module):
    """The module a sharded reference calls: final hidden states of ``model``
    (the root unit of its shards)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        return final_hidden_states(
            self.model, input_ids, attention_mask, position_ids=position_ids
        )


class ShardedCopyReference(AbstractReference):
    """A frozen copy sharded across processes: decoder layers gathered one at a
    time, the root (embeddings, final norm, head) gathered by the forward and
    kept until :meth:`release`, since the policy's head step reads this head
    after the forward. Every process must run the same reference forwards."""

    def __init__(self, trunk: nn.Module) -> None:
        self.trunk = trunk
        self.model = trunk.model
        self.calls = 0

    def _reference_mode(self) -> contextlib.AbstractContextManager[None]:
        return torch.no_grad()

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        *,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.trunk(input_ids, attention_mask, position_ids=position_ids)

    @property
    def head(self) -> nn.Module:
        self.trunk.unshard()  # a no-op when the forward left it gathered
        return self.model.get_output_embeddings()

    def release(self) -> None:
        self.trunk.reshard()


class AdapterOffReference(AbstractReference):
    """The LoRA policy with its adapters disabled: the base model, no copy."""

    def __init__(self, peft_model: nn.Module, *, precision: str = "fp32") -> None:
        self.model = peft_model
        self.calls = 0
        self.precision = precision

    @contextlib.contextmanager
    def _reference_mode(self) -> Iterator[None]:
        with torch.no_grad(), self.model.disable_adapter():
            yield


def check_reference_kind(config: TrainConfig, needs: frozenset[Need]) -> None:
    """Refuse a precomputed reference for needs a cache cannot serve, before any
    model is loaded."""
    if config.reference == "precomputed":
        blocked = sorted(need.value for need in needs if not need.info.cacheable)
        if blocked:
            raise ValueError(
                f"TrainConfig.reference='precomputed': the objective needs "
                f"{', '.join(blocked)}, which need the reference model's full "
                f"distribution or a fresh generation; cached token log-probs cannot "
                f"serve them. Use reference='copy' or 'adapter_off'"
            )


def load_models(
    config: TrainConfig,
    needs: frozenset[Need],
    *,
    checkpoint: str | Path | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, AbstractReference | None, Any, str]:
    """``(policy, reference, tokenizer, model_path)``.

    Args:
        config: the run's settings.
        needs: the objective's needs (decide whether a reference is built).
        checkpoint: resume the policy from this ``checkpoint-N`` directory (full
            weights, or a LoRA adapter); the reference still comes from
            ``config.model``.
        device: where the run computes (chooses the attention implementation;
            ``None``: CUDA when available, else the CPU).
    """
    check_reference_kind(config, needs)
    attention = model_attention(config, device)
    path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path)
    base = load_causal_lm(path, attention)
    wants_reference = reads_reference(needs) and config.reference != "precomputed"
    reference: AbstractReference | None = None
    if config.lora_rank > 0:
        if checkpoint is not None:
            from peft import PeftModel

            policy = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
        else:
            policy = add_lora(
                base,
                config.lora_rank,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
            )
        if wants_reference and config.reference == "adapter_off":
            reference = AdapterOffReference(policy, precision=config.precision)
        elif wants_reference:
            reference = frozen_reference(load_causal_lm(path, attention), config)
    else:
        if wants_reference:
            reference = frozen_reference(copy.deepcopy(base), config)
        if checkpoint is not None:
            base = load_causal_lm(str(checkpoint), attention)
        policy = base
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    policy.train()
    return policy, reference, tokenizer, path


def default_device() -> torch.device:
    """Where the tools and a saved run's evaluation compute: the current CUDA
    device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_attention(config: TrainConfig, device: torch.device | None = None) -> str:
    """The attention implementation the run's models load with
    (:func:`mipo.training.attention.resolve_attention`); refuses padding-free
    packing with one that would build a dense mask."""
    name = resolve_attention(
        config.attn_implementation,
        device=device or default_device(),
        precision=config.precision,
    )
    if config.padding_free:
        check_packable(name)
    return name


def frozen_reference(model: nn.Module, config: TrainConfig) -> "FrozenCopyReference":
    """``model`` frozen as the reference, in the run's precision: a ``bf16`` run
    holds its decoder matrices in bfloat16, except when TR-DPO's soft update
    trains it (``sync_ref_model``: rounding every update would drift)."""
    _freeze(model)
    dtype = compute_dtype(config.precision)
    if dtype is not None and not config.sync_ref_model:
        cast_reference_matrices(model, dtype)
    return FrozenCopyReference(model, precision=config.precision)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


__all__ = [
    "AbstractReference",
    "AdapterOffReference",
    "FrozenCopyReference",
    "ReferenceTrunk",
    "ShardedCopyReference",
    "check_reference_kind",
    "default_device",
    "add_lora",
    "disable_dropout",
    "enable_gradient_checkpointing",
    "frozen_reference",
    "load_models",
    "model_attention",
    "reads_reference",
    "resolve_model_path",
]
