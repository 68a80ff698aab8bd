"""The README's Python example runs as written, with a tiny random model in
place of SmolLM2 (the one line naming the model is substituted)."""

import math
import re
from pathlib import Path

import torch
from tiny import build_tiny_model_dir

README = Path(__file__).resolve().parent.parent / "README.md"
MODEL_LINE = 'resolve_model_path("smollm2")'


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [block for block in blocks if "mipo.pair_batch(" in block]
    return code


def test_readme_example_runs(tmp_path: Path) -> None:
    code = example()
    assert code.count(MODEL_LINE) == 1
    tiny = build_tiny_model_dir(tmp_path / "tiny")
    namespace: dict[str, object] = {}
    exec(
        compile(code.replace(MODEL_LINE, repr(str(tiny))), "README", "exec"), namespace
    )
    out, model = namespace["out"], namespace["model"]
    # the reference is a copy of the model as it was: every reward is zero at first
    assert math.isclose(float(out.loss.detach()), math.log(2), rel_tol=1e-6)
    assert float(out.metrics["rewards/accuracies"].detach()) == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and float(sum(g.abs().sum() for g in grads)) > 0


def test_pair_batch_carries_what_the_objective_reads() -> None:
    from tiny import tiny_llama

    import mipo
    from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
    from mipo.primitives import UniformPrior

    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 3
    model, tokenizer = tiny_llama(), tiny_chat_tokenizer()
    dpo = mipo.Objective(beta=0.1)
    batch = mipo.pair_batch(dpo, model, tokenizer, rows)
    assert batch.chosen.policy_logps.shape[0] == 3
    assert batch.chosen.reference_logps is not None
    # a different reference changes the rewards
    other = tiny_llama(seed=1)
    shifted = mipo.pair_batch(dpo, model, tokenizer, rows, reference=other)
    assert not torch.equal(batch.chosen.reference_logps, shifted.chosen.reference_logps)
    free = mipo.Objective(prior=UniformPrior(), beta=0.1)
    assert mipo.pair_batch(free, model, tokenizer, rows).chosen.reference_logps is None
