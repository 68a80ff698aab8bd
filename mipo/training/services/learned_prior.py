r"""The prior model behind :class:`~mipo.primitives.MarginalFitPrior`: reference
logits plus a learned vocabulary bias, fitted to policy samples.

$\log\zeta_\phi(y_t|s_t) = \log\operatorname{softmax}(o^{ref}(s_t) + \phi)_{y_t}$.
Its service (:class:`MarginalFitService`) owns one :class:`LogitBiasPrior`;
:func:`fit_prior_to_policy` is the
Blahut–Arimoto prior step (maximum likelihood on responses sampled from the
current policy, ``docs/objective.md#the-prior-step-blahut-arimoto``), and
:meth:`LogitBiasPrior.token_logps` gives the detached $\log\zeta_\phi$ that reaches
$J$ as ``prior_logps``. The
bias is trained by its own objective only; $J$ never differentiates it.
"""

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mipo.needs import Need
from mipo.services import AnchorSampling, MarginalFit
from mipo.training.distributed import sum_reducer
from mipo.training.logps import IGNORE_INDEX
from mipo.training.precision import autocast
from mipo.training.services.anchor import generate_anchor
from mipo.training.services.base import Forward, Models, Service, ServiceSetup
from mipo.typing import TokenLogps

PRIOR_FILE = "prior_model.safetensors"
"""The learned prior's bias inside a ``checkpoint-N`` directory."""


class LogitBiasPrior(nn.Module):
    """$\\phi \\in \\mathbb{R}^V$, zero at the start ($\\zeta_\\phi = \\pi_{ref}$)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def token_logps(
        self,
        reference_hidden: Float[Tensor, "batch length hidden"],
        head: nn.Module,
        labels: Int[Tensor, "batch length"],
        *,
        chunk_tokens: int = 256,
    ) -> TokenLogps:
        r"""$\log\zeta_\phi(y_t|s_t)$ on the shifted axis (0 where the label is
        ignored), without gradient: a constant inside $J$.

        The positions go through the head ``chunk_tokens`` at a time, so at most
        ``[chunk_tokens, vocab]`` logits exist at once (never ``[batch, length,
        vocab]``); the chunks are fixed slices of the flattened positions, which
        needs no host sync."""
        shifted = labels[:, 1:]
        states = reference_hidden[:, :-1].reshape(-1, reference_hidden.shape[-1])
        targets = shifted.reshape(-1)
        parts = []
        with torch.no_grad():
            for start in range(0, targets.shape[0], chunk_tokens):
                part = slice(start, start + chunk_tokens)
                logits = head(states[part]).float() + self.bias.float()
                target = targets[part]
                ids = target.clamp(min=0).unsqueeze(-1)
                picked = torch.log_softmax(logits, dim=-1).gather(-1, ids).squeeze(-1)
                parts.append(torch.where(target == IGNORE_INDEX, 0.0, picked))
        values = (
            torch.cat(parts) if parts else targets.new_zeros(0, dtype=torch.float32)
        )
        return values.reshape(shifted.shape).detach()

    def fit(
        self,
        reference_logits: Float[Tensor, "tokens vocab"],
        tokens: Int[Tensor, " tokens"],
        *,
        steps: int,
        learning_rate: float,
        reduce: Callable[[Tensor], Tensor] | None = None,
        chunk_tokens: int = 256,
    ) -> tuple[float, float]:
        r"""Maximise $\frac1N\sum_n \log\operatorname{softmax}(o_n + \phi)_{y_n}$ over
        $\phi$ by plain gradient descent; returns the mean negative
        log-likelihood before and after. The objective is convex in $\phi$, its
        gradient $\frac1N\sum_n \zeta_\phi(\cdot|s_n) - \hat p$ (model minus
        empirical token frequencies) and its Hessian is at most $\frac12 I$, so a
        rate up to 2 is stable. Plain descent on purpose: Adam's per-coordinate
        normalisation moves every one of the $V$ biases by about the rate per
        step, even for tokens the samples never contain.

        With ``reduce`` (a sum over the processes of a run,
        :func:`mipo.training.distributed.sum_reducer`) the $N$ tokens are those of
        every process: each step sums the per-process gradient sums and token
        counts, so every process takes the same step from the same $\phi$ and
        the bias stays identical everywhere (the fit of one process holding
        all the samples).

        The log-softmax and its gradient run over ``chunk_tokens`` samples at a
        time (each chunk's mean weighted by its share, gradients accumulated),
        so besides the given logits at most ``[chunk_tokens, vocab]`` values
        exist at once; with one chunk this is the plain mean. (The shared fit
        over several processes runs unchunked.)"""
        logits = reference_logits.detach().float()
        if reduce is not None:
            return self._fit_shared(logits, tokens, steps, learning_rate, reduce)
        count = tokens.shape[0]
        chunks = [
            slice(start, start + chunk_tokens)
            for start in range(0, count, chunk_tokens)
        ]

        def nll(part: slice) -> Tensor:
            logps = torch.log_softmax(logits[part] + self.bias.float(), dim=-1)
            mean = -logps.gather(-1, tokens[part].unsqueeze(-1)).mean()
            return mean if len(chunks) == 1 else mean * (logps.shape[0] / count)

        def value() -> float:
            with torch.no_grad():
                return float(sum(nll(part) for part in chunks))

        optimiser = torch.optim.SGD([self.bias], lr=learning_rate)
        before = value()
        with torch.enable_grad():
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                for part in chunks:
                    nll(part).backward()
                optimiser.step()
            self.bias.grad = None
        return before, value()

    def _fit_shared(
        self,
        logits: Tensor,
        tokens: Tensor,
        steps: int,
        learning_rate: float,
        reduce: Callable[[Tensor], Tensor],
    ) -> tuple[float, float]:
        """:meth:`fit` over the tokens of every process."""
        count = reduce(torch.tensor(float(tokens.numel()), device=logits.device))

        def nll_sum() -> Tensor:
            logps = torch.log_softmax(logits + self.bias.float(), dim=-1)
            return -logps.gather(-1, tokens.unsqueeze(-1)).sum()

        optimiser = torch.optim.SGD([self.bias], lr=learning_rate)
        with torch.enable_grad():
            before = float(reduce(nll_sum().detach()) / count)
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                nll_sum().backward()
                self.bias.grad = reduce(self.bias.grad) / count
                optimiser.step()
            self.bias.grad = None
        with torch.no_grad():
            return before, float(reduce(nll_sum()) / count)


def fit_prior_to_policy(
    prior: LogitBiasPrior,
    settings: Any,
    policy: nn.Module,
    reference: Any,
    prompt_input_ids: Int[Tensor, "batch prompt"],
    prompt_attention_mask: Int[Tensor, "batch prompt"],
    *,
    pad_token_id: int,
    eos_token_id: int,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One Blahut–Arimoto prior step: sample one response per prompt from
    ``policy`` (plain sampling at ``settings.sample_temperature``), then fit the
    bias to the sampled tokens under the reference logits (with ``reduce``, to
    the sampled tokens of every process; :meth:`LogitBiasPrior.fit`).

    Args:
        prior: the bias to fit (in place).
        settings: the :class:`~mipo.services.MarginalFit` spec.
        policy: the current policy (samples without gradient).
        reference: the :class:`~mipo.training.models.AbstractReference`.
        prompt_input_ids: left-padded prompts.
        prompt_attention_mask: 1 on prompt tokens.
        pad_token_id: padding id.
        eos_token_id: ends a sampled response.
        reduce: sums a tensor over the processes of a run (``None``: one
            process).

    Returns:
        ``prior/nll_before``, ``prior/nll_after`` (mean per sampled token) and
        ``prior/bias_norm``.
    """
    sampling = AnchorSampling(
        max_new_tokens=settings.sample_max_new_tokens,
        top_k=0,
        top_p=1.0,
        temperature=settings.sample_temperature,
    )
    samples = generate_anchor(
        policy,
        prompt_input_ids,
        prompt_attention_mask,
        sampling=sampling,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    hidden = reference.hidden_states(samples.input_ids, samples.attention_mask)
    labels = samples.labels[:, 1:]
    keep = labels != IGNORE_INDEX
    with torch.no_grad():
        logits = reference.head(hidden[:, :-1][keep]).float()
    before, after = prior.fit(
        logits,
        labels[keep],
        steps=settings.fit_steps,
        learning_rate=settings.fit_learning_rate,
        reduce=reduce,
    )
    return {
        "prior/nll_before": before,
        "prior/nll_after": after,
        "prior/bias_norm": float(prior.bias.detach().norm()),
    }


class MarginalFitService(Service, spec=MarginalFit):
    r"""Owns the bias $\phi$: refits it before every ``update_every``-th optimiser
    step and writes $\log\zeta_\phi$ into ``prior_logps``."""

    description = "learned prior"
    checkpoint_file = PRIOR_FILE

    def __init__(self, spec: MarginalFit, setup: ServiceSetup) -> None:
        super().__init__(spec, setup)
        vocab = setup.models.policy.get_output_embeddings().weight.shape[0]
        self.module = LogitBiasPrior(vocab).to(setup.device)
        self.last_fit: dict[str, float] = {}
        # fitted to the samples of every process, so the bias is the same on all
        self.reduce = sum_reducer(setup.accelerator)
        self.precision = setup.config.precision
        self.device = setup.device

    def before_step(self, step: int, batch: Any, models: Models) -> None:
        if step % self.spec.update_every != 0:
            return
        # the Blahut-Arimoto prior step, outside J, in the run's precision (the
        # bias itself is fitted in float32)
        with autocast(self.precision, self.device):
            self.last_fit = self._fit(batch, models)

    def _fit(self, batch: Any, models: Models) -> dict[str, float]:
        return fit_prior_to_policy(
            self.module,
            self.spec,
            models.policy,
            models.reference,
            batch.tensors.prompt_input_ids,
            batch.tensors.prompt_attention_mask,
            pad_token_id=models.pad_token_id,
            eos_token_id=models.eos_token_id,
            reduce=self.reduce,
        )

    def metrics(self) -> dict[str, float]:
        return dict(self.last_fit)

    def after_forward(
        self,
        forward: Forward,
        batch: Any,  # noqa: ARG002
        models: Models,  # noqa: ARG002
    ) -> dict[Need, Tensor]:
        if forward.reference_hidden is None:
            raise ValueError("the learned prior needs the reference forward")
        logps = self.module.token_logps(
            forward.reference_hidden, forward.reference_head, forward.stacked.labels
        )
        return {Need.PRIOR_LOGPS: logps.to(forward.stats.policy_logps.dtype)}


__all__ = ["PRIOR_FILE", "LogitBiasPrior", "MarginalFitService", "fit_prior_to_policy"]
