r"""Mask models for SparsePO and MaPO: token masks from the reference model.

A mask source (:class:`~mipo.primitives.masks.AbstractMaskSource`) declares its
mask model as a service spec (:class:`~mipo.services.ActivationMasking`,
:class:`~mipo.services.LearnedMasking`); its service builds the model, hooks the
reference forward the trainer already runs (:meth:`AbstractMaskModel.capturing`),
and turns what it captured
into the reward mask $m^u$ and the KL mask $m^d$ on the shifted ``seq`` axis
(:meth:`AbstractMaskModel.masks`). Position $t$ of the shifted axis holds the
label $y_t$ predicted from the state at unshifted position $t$, so every
captured ``[batch, length, ...]`` tensor maps to ``[:, :-1]``.

- :class:`ActivationMaskModel` (MaPO, ``docs/recipe_notes/sparsepo.md``): no
  parameters; the masks are constants in $[0, 1]$.
- :class:`LearnedMaskModel` (SparsePO ``simple_all``): trainable; the
  reference states it reads are captured under ``no_grad``, so gradients of $J$
  reach the mask parameters only.

The module names hooked are those of Hugging Face decoder-only models (Llama,
Qwen, Mistral, SmolLM2): ``*.layers.N``, ``*.mlp.down_proj``,
``*.self_attn.{q,k,v,o}_proj``. A model without them gets one error naming the
missing group.

References:
    Christopoulou et al., arXiv 2410.05102; HEBO/SparsePO ``mapo_trainer.py``
    and ``mask_models.py`` (read for facts only).
"""

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, final

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mipo.needs import Need
from mipo.services import AbstractServiceSpec, ActivationMasking, LearnedMasking
from mipo.training.services.base import Forward, Models, Service, ServiceSetup
from mipo.typing import TokenMask, TokenValues, TokenWeights

MASK_MODEL_FILE = "mask_model.safetensors"
"""The learned mask model's weights inside a ``checkpoint-N`` directory."""

CaptureKind = Literal["input", "output"]


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class CapturePoint:
    """A module whose input or output is recorded during the reference forward.

    Args:
        group: the group it belongs to (``mlp``, ``attn``, ``resid``, ``layer``).
        module: the hooked module.
        kind: record the (first positional) input or the output.
    """

    group: str
    module: nn.Module
    kind: CaptureKind


def minmax_over_response(values: TokenValues, response_mask: TokenMask) -> TokenWeights:
    r"""$(v_t - \min_{t'} v_{t'}) / (\max_{t'} v_{t'} - \min_{t'} v_{t'})$ over the
    response tokens of each row; 0 outside the response.

    A row whose response values are all equal (e.g. a one-token response) has no
    scale to rescale by; every one of its tokens is both the minimum and the
    maximum, and gets 1 (no token is less salient than another), never NaN.
    """
    inf = torch.full_like(values, torch.inf)
    low = torch.where(response_mask, values, inf).amin(dim=-1, keepdim=True)
    high = torch.where(response_mask, values, -inf).amax(dim=-1, keepdim=True)
    span = high - low
    flat = span <= 0
    scaled = (values - low) / torch.where(flat, torch.ones_like(span), span)
    scaled = torch.where(flat, torch.ones_like(scaled), scaled)
    return torch.where(response_mask, scaled, torch.zeros_like(scaled))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a (possibly peft-wrapped) causal LM."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and name.split(".")[-1] in ("layers", "h")
            and (count is None or len(module) == count)
        ):
            return module
    raise ValueError(
        f"{type(model).__name__}: no decoder layer list (*.layers with "
        f"num_hidden_layers={count} entries) to hook for the mask model"
    )


def _named_suffix(model: nn.Module, suffixes: tuple[str, ...]) -> list[nn.Module]:
    return [
        module
        for name, module in model.named_modules()
        if name.endswith(suffixes) and not list(module.children())
    ]


class AbstractMaskModel(nn.Module, abc.ABC):
    """Hooks the reference forward and maps what it saw to ``(m^u, m^d)``."""

    def __init__(self) -> None:
        super().__init__()
        self._captured: dict[str, list[Tensor]] = {}

    @abc.abstractmethod
    def capture_points(self, model: nn.Module) -> list[CapturePoint]:
        """The modules of the reference model to record."""

    @abc.abstractmethod
    def reduce(self, value: Tensor) -> Tensor:
        """What to keep of a captured ``[batch, length, ...]`` tensor."""

    @abc.abstractmethod
    def masks(
        self,
        captured: dict[str, list[Tensor]],
        final_hidden: Float[Tensor, "batch length hidden"],
        head: nn.Module,
        response_mask: TokenMask,
    ) -> tuple[TokenWeights, TokenWeights]:
        """``(reward_mask, kl_mask)`` on the shifted axis."""

    @contextlib.contextmanager
    def capturing(self, model: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
        """Record the capture points of ``model`` while the block runs."""
        captured: dict[str, list[Tensor]] = {}
        handles = []

        def recorder(point: CapturePoint) -> Callable[..., None]:
            def record(value: object) -> None:
                tensor = value[0] if isinstance(value, tuple) else value
                if not isinstance(tensor, Tensor):
                    raise TypeError(
                        f"mask model: hooked {point.group} {point.kind} of "
                        f"{type(point.module).__name__} is not a tensor"
                    )
                with torch.no_grad():
                    captured.setdefault(point.group, []).append(
                        self.reduce(tensor.detach())
                    )

            if point.kind == "input":
                return lambda _module, args: record(args)
            return lambda _module, _args, output: record(output)

        for point in self.capture_points(model):
            hook = recorder(point)
            if point.kind == "input":
                handles.append(point.module.register_forward_pre_hook(hook))
            else:
                handles.append(point.module.register_forward_hook(hook))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()


class ActivationMaskModel(AbstractMaskModel):
    r"""MaPO: $m^u = m^d$ = mean over groups of the mean over each group's hooks of
    the min-max rescaled hidden-dimension mean (MaPO). Constant."""

    def __init__(self, groups: tuple[str, ...]) -> None:
        super().__init__()
        self.groups = tuple(groups)

    def capture_points(self, model: nn.Module) -> list[CapturePoint]:
        points: list[CapturePoint] = []
        if "resid" in self.groups:
            points.append(
                CapturePoint(
                    group="resid", module=model.get_input_embeddings(), kind="output"
                )
            )
            # the last layer's output is replaced by the final norm (added in masks)
            points += [
                CapturePoint(group="resid", module=layer, kind="output")
                for layer in list(decoder_layers(model))[:-1]
            ]
        if "mlp" in self.groups:
            modules = _named_suffix(model, ("mlp.down_proj",))
            if not modules:
                raise ValueError(
                    f"ActivationMasks group 'mlp': {type(model).__name__} has no "
                    f"*.mlp.down_proj to read the MLP post-activation from"
                )
            points += [
                CapturePoint(group="mlp", module=m, kind="input") for m in modules
            ]
        if "attn" in self.groups:
            projections = _named_suffix(
                model,
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            )
            outputs = _named_suffix(model, ("self_attn.o_proj",))
            if not projections or not outputs:
                raise ValueError(
                    f"ActivationMasks group 'attn': {type(model).__name__} has no "
                    f"*.self_attn.{{q,k,v,o}}_proj"
                )
            points += [
                CapturePoint(group="attn", module=m, kind="output") for m in projections
            ]
            points += [
                CapturePoint(group="attn", module=m, kind="input") for m in outputs
            ]
        return points

    def reduce(self, value: Tensor) -> Tensor:
        return value.float().mean(dim=-1)

    def masks(
        self,
        captured: dict[str, list[Tensor]],
        final_hidden: Float[Tensor, "batch length hidden"],
        head: nn.Module,
        response_mask: TokenMask,
    ) -> tuple[TokenWeights, TokenWeights]:
        per_group: dict[str, list[Tensor]] = {
            group: list(values) for group, values in captured.items()
        }
        final = final_hidden.detach().float()
        if "resid" in self.groups:
            per_group.setdefault("resid", []).append(final.mean(dim=-1))
        if "logits" in self.groups:
            # mean_v (W_v . h + c_v) = h . mean_v W_v + mean_v c_v: no full logits
            weight = head.weight.detach().float().mean(dim=0)
            bias = getattr(head, "bias", None)
            mean_logit = final @ weight
            if bias is not None:
                mean_logit = mean_logit + bias.detach().float().mean()
            per_group["logits"] = [mean_logit]
        group_masks = []
        for group in self.groups:
            values = per_group.get(group)
            if not values:
                raise ValueError(f"ActivationMasks group {group!r}: nothing captured")
            rescaled = [minmax_over_response(v[:, :-1], response_mask) for v in values]
            group_masks.append(torch.stack(rescaled).mean(dim=0))
        mask = torch.stack(group_masks).mean(dim=0).detach()
        return mask, mask


class SparseMaskNetwork(nn.Module):
    r"""One SparsePO ``simple_all`` mask: shared LayerNorm; per layer
    Linear(d, 1) → ReLU → Dropout; concatenate; Linear(L, 1, bias=False) → ReLU →
    Dropout. Output $\ge 0$."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        mixer_init: float | None = None,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.per_layer = nn.ModuleList(
            nn.Linear(hidden_size, 1) for _ in range(num_layers)
        )
        self.combine = nn.Linear(num_layers, 1, bias=False)
        if mixer_init is not None:
            # see LearnedMasks.mixer_init: avoids a mask that is dead from the start
            nn.init.constant_(self.combine.weight, mixer_init / num_layers)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, states: Sequence[Float[Tensor, "batch seq hidden"]]
    ) -> TokenWeights:
        """The mask from one ``[batch, seq, hidden]`` state per layer (a list:
        the layers are never stacked into one more copy)."""
        scores = [
            self.dropout(torch.relu(linear(self.norm(state))))
            for linear, state in zip(self.per_layer, states, strict=True)
        ]
        combined = self.combine(torch.cat(scores, dim=-1))
        return self.dropout(torch.relu(combined)).squeeze(-1)


class LearnedMaskModel(AbstractMaskModel):
    """SparsePO: one shared mask network ("sparse-common") or two
    ("sparse-indp") over the reference hidden states of every layer."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_layers: int,
        independent: bool,
        dropout: float,
        mixer_init: float | None = None,
    ) -> None:
        super().__init__()
        self.reward = SparseMaskNetwork(hidden_size, num_layers, dropout, mixer_init)
        self.kl = (
            SparseMaskNetwork(hidden_size, num_layers, dropout, mixer_init)
            if independent
            else None
        )

    def capture_points(self, model: nn.Module) -> list[CapturePoint]:
        # every layer but the last; the last is the final-norm output (masks())
        return [
            CapturePoint(group="layer", module=layer, kind="output")
            for layer in list(decoder_layers(model))[:-1]
        ]

    def reduce(self, value: Tensor) -> Tensor:
        return value

    def masks(
        self,
        captured: dict[str, list[Tensor]],
        final_hidden: Float[Tensor, "batch length hidden"],
        head: nn.Module,  # noqa: ARG002
        response_mask: TokenMask,
    ) -> tuple[TokenWeights, TokenWeights]:
        layers = [*captured.get("layer", []), final_hidden.detach()]
        parameter = self.reward.combine.weight
        # views on the shifted axis (a copy only where the dtype differs)
        states = [s[:, :-1].to(parameter.dtype) for s in layers]
        reward = self.reward(states)
        kl = reward if self.kl is None else self.kl(states)
        zero = torch.zeros_like(reward)
        return (
            torch.where(response_mask, reward, zero),
            torch.where(response_mask, kl, zero),
        )


class _MaskService(Service):
    """Hooks the reference forward and writes the reward mask into
    ``token_weights`` and the KL mask into ``kl_weights``."""

    description = "mask model"
    checkpoint_file = MASK_MODEL_FILE
    supports_packing = False  # the hooks see packed rows, the masks want padded

    def __init__(self, spec: AbstractServiceSpec, setup: ServiceSetup) -> None:
        super().__init__(spec, setup)
        self.module = self.build(setup.models.policy.config).to(setup.device)
        self.module.train()

    def build(self, config: Any) -> AbstractMaskModel:
        """The mask model for a policy with Hugging Face ``config``."""
        raise NotImplementedError

    def reference_hooks(self, reference_model: nn.Module | None) -> Any:
        if reference_model is None:
            raise ValueError(
                "the mask model needs the reference model's modules (a .model "
                "attribute) to hook"
            )
        return self.module.capturing(reference_model)

    def after_forward(
        self,
        forward: Forward,
        batch: Any,  # noqa: ARG002
        models: Models,  # noqa: ARG002
    ) -> dict[Need, Tensor]:
        if forward.reference_hidden is None:
            raise ValueError(f"{self.spec!r}: the masks need the reference forward")
        reward, kl = self.module.masks(
            forward.captured[self],
            forward.reference_hidden,
            forward.reference_head,
            forward.stats.response_mask,
        )
        return {Need.TOKEN_WEIGHTS: reward, Need.KL_WEIGHTS: kl}


class ActivationMaskService(_MaskService, spec=ActivationMasking):
    """MaPO's constant masks."""

    def build(self, config: Any) -> AbstractMaskModel:  # noqa: ARG002
        return ActivationMaskModel(self.spec.groups)


class LearnedMaskService(_MaskService, spec=LearnedMasking):
    """SparsePO's mask networks, trained with the policy in their own optimiser
    group."""

    def build(self, config: Any) -> AbstractMaskModel:
        spec = self.spec
        return LearnedMaskModel(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            independent=spec.independent,
            dropout=spec.dropout,
            mixer_init=spec.mixer_init,
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        parameters = list(self.module.parameters())
        return [{"params": parameters, "weight_decay": self.spec.weight_decay}]


__all__ = [
    "AbstractMaskModel",
    "ActivationMaskModel",
    "CapturePoint",
    "LearnedMaskModel",
    "ActivationMaskService",
    "LearnedMaskService",
    "MASK_MODEL_FILE",
    "SparseMaskNetwork",
    "decoder_layers",
    "minmax_over_response",
]
