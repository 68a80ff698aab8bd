r"""The trainer side of a model-side service: one interface, one registry.

A primitive declares what it needs computed as a :class:`~mipo.services.AbstractServiceSpec`
(hyperparameters only, part of the core). For each spec of a run the trainer
builds the :class:`Service` registered for the spec's type. The service owns
everything model-side about it:

- its **modules and parameters**, with their optimiser groups
  (:meth:`Service.parameter_groups`, weight decay included);
- its **checkpoint state** (:meth:`Service.state_dict`, saved as
  ``checkpoint-N/{checkpoint_file}`` and restored on resume);
- its **hooks**: :meth:`Service.before_step` (at the first micro-batch of each
  optimiser step) and :meth:`Service.after_step` (after each optimiser step);
  a service that acts every N steps checks the step itself;
- the **batch fields it fills**, in the phases of one batch build
  (:class:`~mipo.training.batching.BatchBuilder`): extra generated sides
  (:meth:`Service.extra_sides`), values computed before the forwards
  (:meth:`Service.before_forward`), hooks on the reference forward
  (:meth:`Service.reference_hooks`) and on the policy forward
  (:meth:`Service.policy_hooks`), and values computed from the forwards
  (:meth:`Service.after_forward`).

Every value a service returns is a tensor over the rows of the stacked forward
(chosen rows, then rejected rows), on the shifted axis, and the table of needs
(:data:`mipo.needs.NEEDS`) decides which sides receive it. Generated sides
(the anchor) run in a forward of their own, without the services' hooks, and
receive no service values. A value keyed
by a :class:`~mipo.batch.Side` field name instead of a need is a companion of
the service's fields that no need names (the attribution score of the first
token): it goes to the chosen and rejected sides.

A service class registers itself for its spec type when it is defined::

    class MyService(Service, spec=MySpec): ...

so a service written in a user's module (or a test file) is found like the
built-in ones, with no edit to the library.
"""

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from mipo.needs import Need
from mipo.services import AbstractServiceSpec
from mipo.training.config import TrainConfig
from mipo.training.logps import TokenStats


@final
@dataclass(frozen=True, kw_only=True)
class Models:
    """What a batch build and a service may read.

    Args:
        policy: the (unwrapped) causal LM; its output embedding is the head.
        reference: the reference (:class:`~mipo.training.models.AbstractReference`),
            or ``None`` when the run needs none or caches its log-probs.
        pad_token_id: padding id for stacking and generation.
        eos_token_id: ends generated responses.
        body: the module that runs the policy forward and head (a
            :class:`~mipo.training.batching.CausalLMBody`, possibly wrapped by
            accelerate); built from ``policy`` when ``None``.
    """

    policy: nn.Module
    reference: Any = None
    pad_token_id: int
    eos_token_id: int | None = None
    body: nn.Module | None = None


@final
@dataclass(frozen=True, kw_only=True)
class Stacked:
    """The sequences of one micro-batch stacked along the batch axis.

    Args:
        input_ids: ``[rows, length]``, right-padded.
        attention_mask: ``[rows, length]``.
        labels: ``[rows, length]``, -100 off the responses.
        rows: rows per part (chosen, rejected, then generated sides).
        needs: the needs this batch build fills.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    rows: tuple[int, ...]
    needs: frozenset[Need] = frozenset()

    @property
    def pair_rows(self) -> int:
        """Rows of the chosen and the rejected part."""
        return self.rows[0] + self.rows[1]

    @property
    def length(self) -> int:
        """Positions of the shifted axis."""
        return self.labels.shape[1] - 1


@final
@dataclass(frozen=True, kw_only=True)
class Forward:
    """What the policy and reference forwards of one batch produced (unpacked
    when the forwards ran padding-free).

    Args:
        stacked: the stacked inputs.
        stats: the policy's token statistics (and reference log-probs and KLs).
        hidden: the policy's final hidden states ``[rows, length, hidden]``.
        reference_hidden: the reference's final hidden states, or ``None``.
        reference_head: the reference's output embedding, or ``None``.
        captured: what each service's reference hooks recorded, by service.
        policy_captured: what each service's policy hooks recorded, by service.
    """

    stacked: Stacked
    stats: TokenStats
    hidden: Tensor
    reference_hidden: Tensor | None = None
    reference_head: nn.Module | None = None
    captured: Mapping["Service", Any] = field(default_factory=dict)
    policy_captured: Mapping["Service", Any] = field(default_factory=dict)


@final
@dataclass(frozen=True, kw_only=True)
class ServiceSetup:
    """What a service is built from.

    Args:
        config: the run's settings.
        models: the models (policy already on ``device``).
        device: where the service's modules live.
        checkpoint: resume from this ``checkpoint-N`` directory (``None``: fresh).
        data: the run's encoded pairs (``mipo.training.loaders.RunData``).
        model_path: the resolved model directory.
        accelerator: the run's ``accelerate.Accelerator`` (``None`` outside
            training).
        training: False when evaluating a saved run: nothing may be created.
    """

    config: TrainConfig
    models: Models
    device: torch.device
    checkpoint: Path | None = None
    data: Any = None
    model_path: str = ""
    accelerator: Any = None
    training: bool = True


_REGISTRY: dict[type[AbstractServiceSpec], type["Service"]] = {}


class Service:
    """A model-side service (module docstring). Every hook is a no-op by default.

    Subclasses register for their spec type with ``class X(Service, spec=Spec)``
    and are built as ``X(spec, setup)``.

    Attributes:
        spec: the spec it serves.
        module: the module it owns (``None``: none); its state is the default
            checkpoint state and its mode follows evaluation.
        checkpoint_file: file name of its state inside ``checkpoint-N``.
        description: how errors name it ("mask model").
        supports_packing: False when it cannot run on padding-free packed rows.
        needs_grad: True when it takes gradients itself; it then enables them
            around its own computation (evaluation and the tools build batches
            under ``torch.no_grad``).
    """

    spec_type: ClassVar[type[AbstractServiceSpec]]
    checkpoint_file: ClassVar[str | None] = None
    description: ClassVar[str] = "service"
    supports_packing: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False

    def __init_subclass__(
        cls, spec: type[AbstractServiceSpec] | None = None, **kwargs: Any
    ):
        super().__init_subclass__(**kwargs)
        if spec is not None:
            if not (isinstance(spec, type) and issubclass(spec, AbstractServiceSpec)):
                raise TypeError(
                    f"{cls.__name__}: spec must be a AbstractServiceSpec subclass"
                )
            cls.spec_type = spec
            _REGISTRY[spec] = cls

    def __init__(self, spec: AbstractServiceSpec, setup: ServiceSetup | None) -> None:  # noqa: ARG002
        self.spec = spec
        self.module: nn.Module | None = None

    @classmethod
    def check(cls, spec: AbstractServiceSpec, config: TrainConfig) -> None:  # noqa: ARG003
        """Refuse, before any model is loaded, a run this service cannot serve."""

    # -- modules, parameters, checkpoint state -------------------------------
    def modules(self) -> list[nn.Module]:
        """The modules it owns."""
        return [] if self.module is None else [self.module]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of its trainable parameters (none by default)."""
        return []

    def state_dict(self) -> dict[str, Tensor]:
        """Its checkpoint state."""
        return {} if self.module is None else dict(self.module.state_dict())

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        if self.module is not None:
            self.module.load_state_dict(state)

    # -- hooks ----------------------------------------------------------------
    def before_step(self, step: int, batch: Any, models: Models) -> None:  # noqa: ARG002
        """Before optimiser step ``step + 1``, with its first micro-batch."""

    def after_step(self, step: int, models: Models) -> None:  # noqa: ARG002
        """After optimiser step ``step`` (1-based)."""

    def metrics(self) -> dict[str, float]:
        """Scalars logged with the training metrics."""
        return {}

    # -- batch fields ---------------------------------------------------------
    def extra_sides(self, batch: Any, models: Models) -> dict[Need, Any]:  # noqa: ARG002
        """Generated sequences (``SequenceTensors``) to forward as extra sides,
        by batch-level need."""
        return {}

    def before_forward(
        self,
        stacked: Stacked,  # noqa: ARG002
        batch: Any,  # noqa: ARG002
        models: Models,  # noqa: ARG002
    ) -> dict[Need | str, Tensor]:
        """Fields computed from the stacked inputs, before the forwards."""
        return {}

    def reference_hooks(
        self,
        reference_model: nn.Module,  # noqa: ARG002
    ) -> contextlib.AbstractContextManager[Any]:
        """A context active during the reference forward; its value reaches
        :meth:`after_forward` as ``forward.captured[self]``."""
        return contextlib.nullcontext()

    def policy_hooks(
        self,
        policy: nn.Module,  # noqa: ARG002
    ) -> contextlib.AbstractContextManager[Any]:
        """A context active during the policy forward of the chosen and rejected
        rows (in the run's grad and train/eval modes); its value reaches
        :meth:`after_forward` as ``forward.policy_captured[self]``."""
        return contextlib.nullcontext()

    def after_forward(
        self,
        forward: Forward,  # noqa: ARG002
        batch: Any,  # noqa: ARG002
        models: Models,  # noqa: ARG002
    ) -> dict[Need | str, Tensor]:
        """Fields computed from the forwards."""
        return {}

    # -- checkpoint files -------------------------------------------------------
    def save(self, checkpoint: Path) -> None:
        """Write :meth:`state_dict` (when not empty) into ``checkpoint``."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if state and self.checkpoint_file is not None:
            from safetensors.torch import save_file

            save_file(state, str(Path(checkpoint) / self.checkpoint_file))

    def restore(self, checkpoint: Path) -> None:
        """Load its state from ``checkpoint`` (a service without state loads
        nothing)."""
        if not self.state_dict() or self.checkpoint_file is None:
            return
        from safetensors.torch import load_file

        path = Path(checkpoint) / self.checkpoint_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run's {self.description} is missing")
        self.load_state_dict(load_file(str(path)))


def service_class(spec: AbstractServiceSpec) -> type[Service]:
    """The service registered for ``spec``'s type (or for a base class of it)."""
    for kind in type(spec).__mro__:
        if kind in _REGISTRY:
            return _REGISTRY[kind]
    raise ValueError(
        f"{spec!r}: no service is registered for {type(spec).__name__}; define "
        f"`class ...(mipo.training.services.Service, spec={type(spec).__name__})` "
        f"in a module that is imported before training"
    )


def check_specs(specs: Iterable[AbstractServiceSpec], config: TrainConfig) -> None:
    """Every spec has a service, and each service accepts the run's settings."""
    for spec in specs:
        service_class(spec).check(spec, config)


def build_services(
    specs: Iterable[AbstractServiceSpec], setup: ServiceSetup
) -> tuple[Service, ...]:
    """One service per spec, in order, restored from ``setup.checkpoint``."""
    services = []
    for spec in specs:
        service = service_class(spec)(spec, setup)
        if setup.checkpoint is not None:
            service.restore(setup.checkpoint)
        services.append(service)
    return tuple(services)


@contextlib.contextmanager
def evaluating(services: Iterable[Service]) -> Any:
    """Every module of ``services`` in eval mode; each one's mode restored after."""
    modules = [module for service in services for module in service.modules()]
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)


__all__ = [
    "Forward",
    "Models",
    "Service",
    "ServiceSetup",
    "Stacked",
    "build_services",
    "check_specs",
    "evaluating",
    "service_class",
]
