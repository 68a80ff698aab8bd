"""DPO step time and memory: mipo's loss path vs TRL's DPOTrainer, same everything.

Variants (one subprocess each, so that peak RSS is per variant):

* ``floor``: the bare minimum of any DPO step with materialised logits: policy
  ``model(input_ids, attention_mask).logits`` forward and the backward of their
  mean, plus a reference forward under ``no_grad``.
* ``trl``: ``DPOTrainer.compute_loss(model, inputs)`` (TRL's own fused-LM-head
  log-probs, sigmoid loss, its metrics) + backward.
* ``trl_liger``: the same with ``DPOConfig(use_liger_kernel=True)``; TRL applies
  Liger's layer kernels (RMSNorm, RoPE, SwiGLU; not its fused linear
  cross-entropy, which TRL refuses) when training starts, so this benchmark,
  which calls ``compute_loss`` directly, applies them the way the trainer does
  (``transformers.integrations.liger.apply_liger_kernel``). Liger's kernels are
  Triton kernels: where they cannot run (no GPU) the variant reports the error.
* ``mipo_eager``: :func:`mipo.training.logps.final_hidden_states` +
  :func:`mipo.training.logps.token_stats` (``chunk_size=None``) + the ``dpo`` recipe's
  ``Objective`` + backward.
* ``mipo_chunked``: the same with ``chunk_size`` (default 1024).

Every variant sees the same model weights (policy and a perturbed reference), the
same batch (collated by TRL's ``DataCollatorForPreference``: chosen rows then
rejected rows, right-padded) and runs ``--warmup`` untimed then ``--steps`` timed
loss+backward steps (no optimiser step, identical for all). Reported: median
step time, its ratio to ``floor``, tokens/s (non-padding tokens of chosen +
rejected per second), and peak RSS of the process (``ru_maxrss``), which
includes the two models and Python/torch (printed separately as ``base``); on
CUDA (``--device cuda``) also the peak of ``torch.cuda.max_memory_allocated``
during the steps. ``--bf16`` runs every variant's forward under
``torch.autocast(device, bfloat16)`` (the same for all). ``--json PATH`` writes
the results.

The model is ``--model`` when given, else SmolLM2-135M-Instruct when it is
already converted in mipo's cache, else a randomly initialised model of the same architecture (LlamaConfig
with SmolLM2-135M's sizes): step time and memory depend on the shapes, not on
the weights.

Usage::

    python benchmarks/dpo_vs_trl.py --pairs 4 --prompt-length 64 --completion-length 64
    python benchmarks/dpo_vs_trl.py --device cuda --bf16 --pairs 8 \
        --prompt-length 512 --completion-length 512 --json dpo.json
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

VARIANTS = ("floor", "trl", "trl_liger", "mipo_eager", "mipo_chunked")


def smollm2_sized_config() -> Any:
    from transformers import LlamaConfig

    # SmolLM2-135M-Instruct's config.json (HuggingFaceTB/SmolLM2-135M-Instruct).
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def load_models(seed: int, model: str | None = None) -> tuple[Any, Any, str]:
    from pathlib import Path

    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from mipo.training.assets import DIR_NAME, MARKER, cache_root

    # Only an already converted SmolLM2 (or the --model folder) is used: the
    # benchmark never downloads or converts (mipo.training.assets.smollm2_dir() may do both).
    path = Path(model) if model else cache_root() / DIR_NAME
    if model or (path / MARKER).is_file():
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        source = f"model from {path}"
    else:
        torch.manual_seed(seed)
        policy = LlamaForCausalLM(smollm2_sized_config())
        reference = LlamaForCausalLM(smollm2_sized_config())
        reference.load_state_dict(policy.state_dict())
        source = f"random-init SmolLM2-135M architecture ({path} not converted)"
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in reference.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    reference.requires_grad_(False)
    return policy.train(), reference.eval(), source


def make_batch(args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    gen = torch.Generator().manual_seed(args.seed)
    examples = []
    for _ in range(args.pairs):
        # Lengths vary per example (at least half the maximum) so padding is real.
        def length(maximum: int) -> int:
            return int(torch.randint(maximum // 2, maximum + 1, (1,), generator=gen))

        def ids(n: int) -> list[int]:
            return torch.randint(3, vocab, (n,), generator=gen).tolist()

        examples.append(
            {
                "prompt_ids": ids(length(args.prompt_length)),
                "chosen_ids": ids(length(args.completion_length)),
                "rejected_ids": ids(length(args.completion_length)),
            }
        )
    batch = DataCollatorForPreference(pad_token_id=2)(examples)
    return {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def step_fn(variant: str, policy: Any, reference: Any, batch: dict, args: Any):
    ids, attention = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    if variant == "floor":

        def step() -> None:
            policy(input_ids=ids, attention_mask=attention).logits.mean().backward()
            with torch.no_grad():
                reference(input_ids=ids, attention_mask=attention)

        return step
    if variant in ("trl", "trl_liger"):
        import datasets
        import trl
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(
            models.WordLevel({"<unk>": 0, "<s>": 1, "<eos>": 2}, "<unk>")
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="<unk>",
            eos_token="<eos>",
            pad_token="<eos>",
        )
        config = trl.DPOConfig(
            output_dir=tempfile.mkdtemp(),
            beta=0.1,
            bf16=args.bf16,
            gradient_checkpointing=False,
            use_cpu=args.device == "cpu",
            report_to="none",
            per_device_train_batch_size=args.pairs,
            use_liger_kernel=variant == "trl_liger",
        )
        dummy = datasets.Dataset.from_list(
            [{"prompt": "<s>", "chosen": "<s>", "rejected": "<s>"}]
        )
        trainer = trl.DPOTrainer(
            model=policy,
            ref_model=reference,
            args=config,
            train_dataset=dummy,
            processing_class=tokenizer,
        )
        trainer.model.train()
        if variant == "trl_liger":
            from transformers.integrations.liger import apply_liger_kernel

            # what Trainer.train() does first with use_liger_kernel=True
            apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)

        def step() -> None:
            trainer.compute_loss(trainer.model, batch).backward()

        return step
    from mipo import PairBatch, Side
    from mipo.training.logps import final_hidden_states, token_stats
    from mipo.training.recipes import load_recipe

    objective = load_recipe("dpo").make_objective(beta=0.1)
    chunk_size = args.chunk_size if variant == "mipo_chunked" else None
    n = args.pairs

    def step() -> None:
        with torch.no_grad():
            reference_hidden = final_hidden_states(reference, ids, attention)
        stats = token_stats(
            final_hidden_states(policy, ids, attention),
            policy.get_output_embeddings(),
            labels,
            reference_hidden=reference_hidden,
            reference_head=reference.get_output_embeddings(),
            chunk_size=chunk_size,
        )
        assert stats.reference_logps is not None
        chosen, rejected = (
            Side(
                policy_logps=stats.policy_logps[rows],
                response_mask=stats.response_mask[rows],
                reference_logps=stats.reference_logps[rows],
            )
            for rows in (slice(0, n), slice(n, 2 * n))
        )
        objective(PairBatch(chosen=chosen, rejected=rejected)).loss.backward()

    return step


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    policy, reference, source = load_models(args.seed, args.model)
    policy.to(args.device)
    reference.to(args.device)
    batch = make_batch(args, policy.config.vocab_size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cuda = args.device.startswith("cuda")
    inner = step_fn(args.variant, policy, reference, batch, args)

    def step() -> None:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            inner()
        if cuda:
            torch.cuda.synchronize()

    times = []
    for i in range(args.warmup + args.steps):
        policy.zero_grad(set_to_none=True)
        if cuda and i == args.warmup:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "variant": args.variant,
        "source": source,
        "median_s": statistics.median(times),
        "times_s": times,
        "tokens": int(batch["attention_mask"].sum()),
        "padded_shape": list(batch["input_ids"].shape),
        "base_rss": base_rss,
        "peak_rss": peak_rss,
        "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None,
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="a model folder (default: SmolLM2)")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.variant is not None:
        child(args)
        return
    passthrough = _without_options(sys.argv[1:], ("--variants", "--json"))
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for variant in args.variants:
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--variant", variant],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            failures[variant] = _last_error(out.stderr or out.stdout)
            print(f"{variant} failed: {failures[variant]}", flush=True)
            continue
        results[variant] = json.loads(lines[-1][len("RESULT ") :])
        print(f"# {variant}: {results[variant]['times_s']}", flush=True)
    setup = (
        f"batch {args.pairs} pairs, prompt <= {args.prompt_length}, completion <= "
        f"{args.completion_length}; torch {torch.__version__}; device {args.device}; "
        f"bf16 autocast {args.bf16}; threads {args.threads}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "results": results, "failures": failures}, f)
    if not results:
        return
    first = next(iter(results.values()))
    print(
        f"# model: {first['source']}; padded {first['padded_shape']}, "
        f"{first['tokens']} tokens; {setup}"
    )
    floor = results.get("floor", {}).get("median_s")
    trl_time = results.get("trl", {}).get("median_s")
    print(
        "| variant | step (s) | / floor | / TRL | tokens/s | peak RSS (MiB) | "
        "base RSS (MiB) | CUDA peak (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        ratio = f"{r['median_s'] / floor:.2f}" if floor else "-"
        to_trl = f"{r['median_s'] / trl_time:.2f}" if trl_time else "-"
        cuda = "-" if r.get("cuda_peak") is None else f"{r['cuda_peak'] / 2**20:,.0f}"
        print(
            f"| {variant} | {r['median_s']:.3f} | {ratio} | {to_trl} | "
            f"{r['tokens'] / r['median_s']:.0f} | {r['peak_rss'] / 2**20:,.0f} | "
            f"{r['base_rss'] / 2**20:,.0f} | {cuda} |"
        )
    for variant, error in failures.items():
        print(f"| {variant} | failed: {error} | | | | | | |")


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the options in ``names`` and their values."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in names
            if skipping:
                continue
        elif skipping:
            continue
        kept.append(arg)
    return kept


def _last_error(text: str) -> str:
    """The last line of a traceback that names an exception, or the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


if __name__ == "__main__":
    main()
