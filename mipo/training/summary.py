"""The few lines a run ends with: what improved, by how much, and how sure.

Printed by ``python -m mipo.train`` after the final evaluation: the gold reward
before and after with the 95 % bootstrap interval of the paired gain, the
answers' mean length before and after (a gold reward can grow with length
alone), the held-out reward accuracy with its interval, KL(pi||ref) per token,
and the training loss as a moving average at the start and at the end of the
run.
"""

from pathlib import Path
from typing import Any

MOVING_AVERAGE = 10
"""Logged steps per window of the loss moving average."""


def moving_average(values: list[float], window: int = MOVING_AVERAGE) -> list[float]:
    """Trailing means over ``window`` values (shorter at the start).

    >>> moving_average([1.0, 3.0, 5.0, 7.0], window=2)
    [1.0, 2.0, 4.0, 6.0]
    """
    out = []
    for index in range(len(values)):
        chunk = values[max(0, index - window + 1) : index + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _interval(result: dict[str, Any], key: str, fmt: str = "+.3f") -> str:
    low, high = result.get(f"{key}_low"), result.get(f"{key}_high")
    if low is None or high is None:
        return f"{result[key]:{fmt}}"
    return f"{result[key]:{fmt}} (95% CI {low:{fmt}} to {high:{fmt}})"


def _loss_line(run_dir: Path) -> str | None:
    from mipo.training.run_dir import read_metrics

    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    if len(losses) < 2:
        return None
    window = max(1, min(MOVING_AVERAGE, len(losses) // 3))
    smooth = moving_average(losses, window)
    return (
        f"  training loss, moving average of {window} steps: "
        f"{smooth[window - 1]:.3f} at step {window} -> {smooth[-1]:.3f} at step "
        f"{len(losses)}"
    )


def summary(name: str, config: Any, run_dir: Path, result: dict[str, Any]) -> str:
    """The closing lines of a run, from its final evaluation ``result``."""
    lines = [f"{name}: {result['step']} steps on {config.dataset} ({config.model})"]
    if "eval/gold_reward" in result:
        prompts = result.get("eval/gold_prompts", "")
        lines.append(f"  gold reward on {prompts} held-out prompts (greedy answers):")
        if "eval/gold_reward_before" in result:
            lines.append(
                f"    before {result['eval/gold_reward_before']:+.3f}   "
                f"after {result['eval/gold_reward']:+.3f}   "
                f"gain {_interval(result, 'eval/gold_gain')}"
            )
        else:
            lines.append(f"    after {_interval(result, 'eval/gold_reward')}")
        if "eval/gold_answer_chars" in result:
            before = result.get("eval/gold_answer_chars_before")
            start = "" if before is None else f"before {before:.1f}   "
            lines.append(
                f"    answer length in characters (mean): {start}"
                f"after {result['eval/gold_answer_chars']:.1f}"
            )
    if "eval/rewards/accuracies" in result:
        lines.append(
            f"  held-out reward accuracy {_interval(result, 'eval/rewards/accuracies', '.3f')}"
            f" on {result['eval/pairs']} pairs"
        )
    if "eval/kl_reverse_per_token" in result:
        lines.append(
            f"  KL(policy || reference) per token {result['eval/kl_reverse_per_token']:.4f} nats"
        )
    loss = _loss_line(run_dir)
    if loss:
        lines.append(loss)
    return "\n".join(lines)


__all__ = ["MOVING_AVERAGE", "moving_average", "summary"]
