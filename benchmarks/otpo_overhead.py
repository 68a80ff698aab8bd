"""OTPO overhead: the OT step against the rest of a training step.

Part 1 (solver): OTPO's weights for a batch of pairs with random hidden states
(hidden 576 as SmolLM2-135M, padded length T), computed by mipo's batched torch
solver versus a per-pair loop over POT (the authors' approach; POT's numpy
backend through ``mipo._ot.PotSinkhorn`` and POT's torch backend called
directly).

Part 2 (step): one optimiser step (forward + backward + AdamW) of OTPO versus
DPO on the same model and batch, through the trainer's batch builder.

    python benchmarks/otpo_overhead.py                      # both parts
    python benchmarks/otpo_overhead.py --model tiny --lengths 256
    python benchmarks/otpo_overhead.py --skip-step --device cuda --json otpo.json

On CUDA (``--device cuda``) the hidden states live on the GPU, every timing is
synchronised, and the POT numpy loop includes its copies to and from the host.
"""

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from mipo import Objective
from mipo._ot import POT_VERSION, PotSinkhorn
from mipo.batch import PairBatch, Side
from mipo.primitives import ReferencePrior, TransportTokenWeights


def timed(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (seconds)."""

    def call() -> None:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_pairs(
    batch: int, length: int, hidden: int, seed: int = 0, device: str = "cpu"
) -> PairBatch:
    """Hidden states ~ N(0, 1) + 1 (norms dominate, as for real last-layer states);
    a 10% prompt and responses covering 30-90% of the padded length."""
    generator = torch.Generator().manual_seed(seed)
    start = length // 10

    def one() -> Side:
        lengths = torch.randint(
            int(0.3 * length), int(0.9 * length), (batch,), generator=generator
        )
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for row, n in enumerate(lengths.tolist()):
            mask[row, start : start + n] = True
        states = torch.randn(batch, length, hidden, generator=generator) + 1.0
        return Side(
            policy_logps=torch.zeros(batch, length, device=device),
            response_mask=mask.to(device),
            hidden_states=states.to(device),
        )

    return PairBatch(chosen=one(), rejected=one())


def pot_torch_loop(batch: PairBatch, eps: float) -> list[torch.Tensor]:
    """The authors' loop: POT on torch tensors, one pair at a time."""
    import ot

    from mipo.primitives.otpo import transport_cost

    cost = transport_cost(
        batch.chosen.hidden_states,
        batch.rejected.hidden_states,
        batch.chosen.response_mask,
        batch.rejected.response_mask,
    )
    plans = []
    for k in range(batch.size):
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.simplefilter("ignore")
            plans.append(
                ot.unbalanced.sinkhorn_unbalanced(
                    batch.chosen.response_mask[k].float(),
                    batch.rejected.response_mask[k].float(),
                    cost[k],
                    reg=eps,
                    reg_m=0.2,
                    method="sinkhorn_stabilized",
                    reg_type="entropy",
                )
            )
    return plans


def solver_part(
    lengths: list[int], pairs: int, hidden: int, repeats: int, device: str = "cpu"
) -> list[dict[str, float]]:
    print(
        f"\n## Solver: {pairs} pairs, hidden {hidden}, eps in (1.0, 0.1), tau 0.2, "
        f"device {device}"
    )
    print(
        "| T | eps | torch batched f32 | torch batched f64 | POT numpy loop | "
        "POT torch loop | numpy loop / torch f32 | max abs diff f64 vs POT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for length in lengths:
        batch = random_pairs(pairs, length, hidden, device=device)
        for eps in (1.0, 0.1):
            f32 = TransportTokenWeights(eps=eps)
            f64 = TransportTokenWeights(eps=eps, precision="float64")
            pot = TransportTokenWeights(
                eps=eps, precision="float64", solver=PotSinkhorn()
            )
            t32 = timed(lambda w=f32, b=batch: w(b), repeats, device)
            t64 = timed(lambda w=f64, b=batch: w(b), repeats, device)
            tpot = timed(lambda w=pot, b=batch: w(b), repeats, device)
            ttorch = timed(lambda e=eps, b=batch: pot_torch_loop(b, e), repeats, device)
            diff = max(
                float((a - b).abs().max())
                for a, b in zip(f64(batch), pot(batch), strict=True)
            )
            print(
                f"| {length} | {eps} | {t32 * 1e3:.0f} ms | {t64 * 1e3:.0f} ms | "
                f"{tpot * 1e3:.0f} ms | {ttorch * 1e3:.0f} ms | "
                f"{tpot / t32:.1f}x | {diff:.1e} |",
                flush=True,
            )
            rows.append(
                {
                    "T": length,
                    "eps": eps,
                    "torch_f32_s": t32,
                    "torch_f64_s": t64,
                    "pot_numpy_loop_s": tpot,
                    "pot_torch_loop_s": ttorch,
                    "max_abs_diff_f64_vs_pot": diff,
                }
            )
    return rows


def step_part(model_name: str, pairs: int, response: int, repeats: int) -> None:
    from mipo.data.collate import collate
    from mipo.data.tokenize import EncodedPair
    from mipo.training.batching import BatchBuilder
    from mipo.training.models import FrozenCopyReference, load_causal_lm
    from mipo.training.services import Models

    if model_name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        policy = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=512,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=True,
            )
        )
        vocab = 512
    else:
        from mipo.training.assets import smollm2_dir

        policy = load_causal_lm(str(smollm2_dir()))
        vocab = policy.config.vocab_size
    reference_model = copy.deepcopy(policy).eval()
    for parameter in reference_model.parameters():
        parameter.requires_grad_(False)
    reference = FrozenCopyReference(reference_model)
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    encoded = [
        EncodedPair(
            prompt_ids=ids(32),
            chosen_ids=ids(response),
            rejected_ids=ids(response - 17 * (k + 1)),
        )
        for k in range(pairs)
    ]
    tensors = collate(encoded, pad_token_id=0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-7)
    print(
        f"\n## Step: {model_name}, {pairs} pairs, prompt 32, responses "
        f"{response} and shorter, fp32, AdamW"
    )
    print("| objective | step | OT weights inside the step |")
    print("|---|---|---|")
    results = {}
    for name, objective in (
        ("DPO", Objective(prior=ReferencePrior(), beta=0.1)),
        (
            "OTPO",
            Objective(
                prior=ReferencePrior(),
                weighter=TransportTokenWeights(eps=1.0),
                beta=0.01,
            ),
        ),
    ):
        weight_time = [0.0]

        def step(objective: Objective = objective, clock: list = weight_time) -> None:
            optimizer.zero_grad()
            batch = BatchBuilder(needs=objective.needs)(
                Models(policy=policy, reference=reference, pad_token_id=0), tensors
            )
            start = time.perf_counter()
            objective.weighter(batch)
            clock[0] = time.perf_counter() - start
            objective(batch).loss.backward()
            optimizer.step()

        results[name] = timed(step, repeats)
        print(f"| {name} | {results[name]:.2f} s | {weight_time[0] * 1e3:.0f} ms |")
    print(f"\nOTPO / DPO step time: {results['OTPO'] / results['DPO']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--step-pairs", type=int, default=2)
    parser.add_argument("--step-response", type=int, default=96)
    parser.add_argument("--skip-solver", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    # one thread: on a shared, oversubscribed CPU two intra-op threads made every
    # small kernel ~40x slower (12 ms vs 0.26 ms for one 8x256x256 bmm)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the solver runs")
    parser.add_argument("--json", help="write the solver rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, POT {POT_VERSION}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    if not args.skip_solver:
        rows = solver_part(
            args.lengths, args.pairs, args.hidden, args.repeats, args.device
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": args.device, "solver": rows}, f, indent=2)
    if not args.skip_step:
        step_part(args.model, args.step_pairs, args.step_response, args.repeats)


if __name__ == "__main__":
    main()
