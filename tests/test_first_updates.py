"""Why the main job trains with AdamW: the size of the first optimiser updates.

RMSprop's square average starts at zero, so its first update is
lr * g / sqrt((1 - alpha) g^2) = lr / sqrt(0.01) = 10 lr per parameter, and it
stays several times lr for tens of steps; AdamW's bias correction makes every
update about lr from the start. With the old 2-step warmup the main job's third
step moved every weight by about 5.5 lr, and its loss jumped (docs/which_method.md).
"""

import torch
from tiny import tiny_llama


def _median_update_over_lr(optimizer_class: type, steps: int) -> list[float]:
    model = tiny_llama(0).train()
    lr = 1e-4
    optimizer = optimizer_class(model.parameters(), lr=lr, weight_decay=0.0)
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    ratios = []
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        moved = [
            (p.detach() - b).abs().flatten()
            for p, b in zip(model.parameters(), before, strict=True)
        ]
        ratios.append(float(torch.cat(moved).median()) / lr)
    return ratios


def test_rmsprop_starts_at_ten_times_the_learning_rate() -> None:
    ratios = _median_update_over_lr(torch.optim.RMSprop, 5)
    assert abs(ratios[0] - 10.0) < 0.05
    assert all(r > 4.0 for r in ratios)  # still > 4 lr at step 5


def test_adamw_moves_by_the_learning_rate_from_the_start() -> None:
    ratios = _median_update_over_lr(torch.optim.AdamW, 5)
    assert all(abs(r - 1.0) < 0.05 for r in ratios)
