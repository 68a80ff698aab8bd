"""The outputs of ``python -m mipo.compare``: ``compare.md`` and two figures.

* ``frontier.png``: gold reward against KL(pi||ref) per token, one curve per
  method through its evaluation points (training starts at KL 0, the policy
  being the reference), error bars between seeds; the reward-KL frontier of
  the DPO paper's Figure 2 (arXiv 2305.18290).
* ``curves.png``: training loss, held-out reward accuracy and gold reward
  against the step, one line per method, bands of one standard deviation
  between seeds.
"""

import platform
from pathlib import Path
from typing import Any

FRONTIER_FILE = "frontier.png"
CURVES_FILE = "curves.png"


def _value(point: dict[str, Any], key: str) -> tuple[float, float] | None:
    entry = point.get(key)
    return None if entry is None else (entry["mean"], entry["std"])


def _frontier(axes: Any, method: dict[str, Any]) -> None:
    xs, ys, xerr, yerr = [], [], [], []
    for point in method["curve"]:
        gold = _value(point, "gold")
        kl = (0.0, 0.0) if point["step"] == 0 else _value(point, "kl")
        if gold is None or kl is None:
            continue
        xs.append(kl[0])
        xerr.append(kl[1])
        ys.append(gold[0])
        yerr.append(gold[1])
    if xs:
        axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3,
                      label=method["method"])  # fmt: skip


def _band(axes: Any, steps: list[int], means: list[float], stds: list[float],
          label: str) -> None:  # fmt: skip
    (line,) = axes.plot(steps, means, marker="o", markersize=3, label=label)
    low = [m - s for m, s in zip(means, stds, strict=True)]
    high = [m + s for m, s in zip(means, stds, strict=True)]
    axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)


def _curves(axes: list[Any], method: dict[str, Any]) -> None:
    loss = method.get("loss_curve", [])
    if loss:
        _band(axes[0], [p["step"] for p in loss], [p["mean"] for p in loss],
              [p["std"] for p in loss], method["method"])  # fmt: skip
    for ax, key in zip(axes[1:], ("accuracy", "gold"), strict=True):
        steps, means, stds = [], [], []
        for point in method["curve"]:
            value = _value(point, key)
            if value is not None:
                steps.append(point["step"])
                means.append(value[0])
                stds.append(value[1])
        if steps:
            _band(ax, steps, means, stds, method["method"])


def write_plots(result: dict[str, Any], out: Path) -> list[Path]:
    """``frontier.png`` and ``curves.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = result.get("title", "mipo compare")
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for method in result["methods"]:
        _frontier(axes, method)
    axes.set_xlabel("KL(policy || reference) per token, nats (held-out chosen)")
    axes.set_ylabel("gold reward (held-out prompts, greedy)")
    axes.set_title(f"{title}: reward-KL frontier")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / FRONTIER_FILE, dpi=110)
    plt.close(figure)

    figure, grid = plt.subplots(1, 3, figsize=(15, 4.5))
    for method in result["methods"]:
        _curves(list(grid), method)
    for ax, name in zip(grid, ("training loss (moving average)", "held-out reward accuracy",
                               "gold reward"), strict=True):  # fmt: skip
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    grid[0].legend()
    figure.suptitle(f"{title}: learning curves (bands: 1 s.d. between seeds)")
    figure.tight_layout()
    figure.savefig(out / CURVES_FILE, dpi=110)
    plt.close(figure)
    return [out / FRONTIER_FILE, out / CURVES_FILE]


def _cell(entry: dict[str, Any] | None, fmt: str) -> str:
    if entry is None:
        return "n/a"
    if "low" in entry:
        return f"{entry['mean']:{fmt}} [{entry['low']:{fmt}}, {entry['high']:{fmt}}]"
    spread = f" ± {entry['std']:{fmt}}" if entry.get("seeds", 1) > 1 else ""
    return f"{entry['mean']:{fmt}}{spread}"


def table(result: dict[str, Any]) -> str:
    """The ranking as a markdown table, best gold gain (else accuracy) first;
    the answers' mean length in characters sits next to the gold reward when
    every method's runs logged it."""
    methods = result["methods"]
    lengths = all(m.get("answer_chars") for m in methods)
    length_head = " answer chars |" if lengths else ""
    header = (
        f"| method | gold reward [95% CI] |{length_head} gold gain [95% CI] | "
        "reward accuracy [95% CI] | KL/token | s/step | tokens/s |\n"
        f"|---|---|{'---|' if lengths else ''}---|---|---|---|---|"
    )

    def rank(method: dict[str, Any]) -> float:
        key = method["gold_gain"] or method["reward_accuracy"]
        return -(key["mean"] if key else 0.0)

    rows = [_row(m, lengths) for m in sorted(methods, key=rank)]
    return "\n".join([header, *rows])


def _row(method: dict[str, Any], lengths: bool) -> str:
    cells = [method["method"], _cell(method["gold_reward"], "+.3f")]
    if lengths:
        cells.append(_cell(method.get("answer_chars"), ".1f"))
    cells += [
        _cell(method["gold_gain"], "+.3f"),
        _cell(method["reward_accuracy"], ".3f"),
        _cell(method["kl_per_token"], ".4f"),
        _cell(method["step_seconds"], ".2f"),
        _cell(method["tokens_per_second"], ".0f"),
    ]
    return "| " + " | ".join(cells) + " |"


def machine() -> str:
    """This machine in one line (processor, cores, torch, accelerator)."""
    import os

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {device}"
    )


def _timing(result: dict[str, Any]) -> str:
    """The training time summed over the runs (read back or trained now), and
    this invocation's wall time."""
    seconds = result["seconds"]
    wall = f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"
    text = f"{wall} for this invocation"
    if "train_seconds" in result:
        text = (
            f"{result['train_seconds'] / 60:.0f} min of training steps over "
            f"{result['runs']} runs (evaluation not counted), {text}"
        )
    return text


def _held_out(result: dict[str, Any]) -> str:
    """How many held-out prompts each run scored, and pooled over the seeds."""
    gold = result["methods"][0]["gold_reward"]
    if not gold:
        return "no gold reward"
    seeds = len(result["budget"]["seeds"])
    per_seed = gold["n"] // seeds
    pooled = f", {gold['n']} pooled over {seeds} seeds" if seeds > 1 else ""
    return f"held-out prompts: {per_seed} per seed{pooled}"


def write_report(result: dict[str, Any], out: Path) -> Path:
    """``compare.md``: budget, machine, the table, the figures."""
    budget = result["budget"]
    lines = [
        f"# {result.get('title', 'mipo compare')}",
        "",
        f"Data `{budget['dataset']}`, model `{budget['model']}`, "
        f"{budget['max_steps']} steps of {budget['batch_size']} pairs, "
        f"lr {budget['learning_rate']}, seeds {budget['seeds']}; "
        f"machine: {machine()}; {_timing(result)}.",
        "",
    ]
    if not result["has_gold"]:
        lines += [
            "This data set has no gold reward (pass `--gold module:function`), so "
            "the table ranks by held-out reward accuracy and leaves gold cells empty.",
            "",
        ]
    lines += [table(result), "", f"![frontier]({FRONTIER_FILE})", "",
              f"![curves]({CURVES_FILE})", ""]  # fmt: skip
    path = out / "compare.md"
    path.write_text("\n".join(lines))
    return path


BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def update_page(result: dict[str, Any], page: Path) -> Path:
    """Rewrite the part of ``page`` between its ``compare:`` markers with the
    budget, machine, table and figures of ``result``; the figures are copied to
    ``images/<page stem>/`` beside it. The text outside the markers (the reading)
    is kept."""
    import shutil

    images = page.parent / "images" / page.stem
    images.mkdir(parents=True, exist_ok=True)
    out = Path(result["out_dir"])
    for name in (FRONTIER_FILE, CURVES_FILE):
        shutil.copyfile(out / name, images / name)
    budget = result["budget"]
    body = "\n".join([
        BEGIN,
        f"Generated by `python -m mipo.compare --which-method --seeds "
        f"{','.join(map(str, budget['seeds']))}` on {machine()}; "
        f"{_timing(result)}. Data `{budget['dataset']}` "
        f"({_held_out(result)}), model `{budget['model']}`, {budget['max_steps']} steps of "
        f"{budget['batch_size']} pairs, AdamW lr {budget['learning_rate']} constant after "
        f"{_warmup(budget)}, every other setting the recipe's own.",
        "",
        table(result),
        "",
        f"![reward-KL frontier](images/{page.stem}/{FRONTIER_FILE})",
        "",
        f"![learning curves](images/{page.stem}/{CURVES_FILE})",
        END,
    ])  # fmt: skip
    text = (
        page.read_text()
        if page.is_file()
        else f"# {result['title']}\n\n{BEGIN}\n{END}\n"
    )
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    page.write_text(head + body + tail)
    return page


def _warmup(budget: dict[str, Any]) -> str:
    """The budget's warmup in words (``TrainConfig.warmup_steps`` as
    transformers 5 reads it, else the ratio)."""
    steps = budget.get("warmup_steps")
    if steps is None:
        return f"a warmup over {budget['warmup_ratio']:g} of the steps"
    if 0 < steps < 1:
        return f"a warmup over {steps:g} of the steps"
    return f"{steps:g} warmup steps"


__all__ = [
    "update_page",
    "CURVES_FILE",
    "FRONTIER_FILE",
    "machine",
    "table",
    "write_plots",
    "write_report",
]
