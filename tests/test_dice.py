"""DICE pair construction (arXiv 2406.09760; sail-sg/dice @ 865aa6d; the
differences are listed in docs/guides/dice.md).

Implicit rewards are checked against an independent float64 computation from the
full logits; the length-controlled selection against hand-worked numbers; the
replay against exact counts; the command line by one tiny round end to end.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import build_tiny_model_dir, tiny_llama

from mipo.data import PreferenceRecord, load_records
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.tools.dice import (
    RELEASE_SETTINGS,
    RELEASE_TRAIN_OVERRIDES,
    Candidate,
    DiceSettings,
    ScoredPrompt,
    build_pairs,
    choose_length_alpha,
    implicit_rewards,
    keep_candidates,
    length_gap,
    main,
    offline_count,
    release_counts,
    replay,
    sample_candidates,
    score_candidates,
    stop_token_ids,
    write_pairs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EOS = 2


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return tiny_llama(0), tiny_llama(1)


PROMPT = [{"role": "user", "content": "Add 2 and 3."}]


def oracle_reward(
    policy: torch.nn.Module, reference: torch.nn.Module, response: str
) -> float:
    """sum_t log pi(y_t|s_t) - log pi_ref(y_t|s_t) from the full logits, float64.

    Tokens: ChatML prompt with the generation prompt, then the response bytes and
    the EOS <|im_end|>; one unpadded sequence.
    """
    tokenizer = tiny_chat_tokenizer()
    prompt_text = "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n"
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # byte-level, no merges: one token per UTF-8 byte, ids 3.. in byte-alphabet order
    body = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert len(body) == len(response.encode())
    ids = torch.tensor([prompt + body + [EOS]])
    labels = ids[0, len(prompt) :]
    total = 0.0
    for model, sign in ((policy, 1.0), (reference, -1.0)):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        total += sign * float(logps.gather(1, labels[:, None]).sum())
    return total


def test_implicit_reward_matches_full_logit_oracle(models) -> None:
    policy, reference = models
    responses = ["5", "It is five.", "", "2 + 3 = 5, so the answer is 5"]
    got = implicit_rewards(
        policy, reference, tiny_chat_tokenizer(), PROMPT, responses, batch_size=3
    )
    want = [oracle_reward(policy, reference, text) for text in responses]
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64),
        torch.tensor(want, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )
    # chunked log-prob path, one response per batch: same values
    chunked = implicit_rewards(
        policy,
        reference,
        tiny_chat_tokenizer(),
        PROMPT,
        responses,
        batch_size=1,
        chunk_size=4,
    )
    torch.testing.assert_close(
        torch.tensor(chunked), torch.tensor(got), rtol=1e-5, atol=1e-5
    )


def test_implicit_reward_is_zero_against_itself(models) -> None:
    policy, _ = models
    got = implicit_rewards(policy, policy, tiny_chat_tokenizer(), PROMPT, ["a", "bc"])
    assert got == [0.0, 0.0]


def test_sample_candidates_is_seeded_and_shaped(models) -> None:
    policy, _ = models
    prompts = [PROMPT, [{"role": "user", "content": "Hi"}], "plain prompt"]

    def draw(seed: int) -> list[list[Candidate]]:
        return sample_candidates(
            policy,
            tiny_chat_tokenizer(),
            prompts,
            num_samples=3,
            max_new_tokens=6,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            batch_size=2,
        )

    state = torch.get_rng_state()
    first = draw(7)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    assert [len(row) for row in first] == [3, 3, 3]
    assert all(isinstance(c.text, str) for row in first for c in row)
    assert draw(7) == first
    assert draw(8) != first


# Hand-worked example (lengths in characters):
#   prompt 1: A = 10 chars, r = 1.0;  B = 2 chars, r = 0.0;  C = 6 chars, r = 0.7
#   prompt 2: D = 5 chars, r = 0.5;   E = 3 chars, r = 0.4
# alpha = 0:   P1 (A, B) gap +8; P2 (D, E) gap +2;  mean +5
# alpha = 0.1: P1 r_a = (0.0, -0.2, 0.1) -> (C, B) gap +4;
#              P2 r_a = (0.0, 0.1) -> (E, D) gap -2;  mean +1
# alpha = 0.2: P1 r_a = (-1.0, -0.4, -0.5) -> (B, A) gap -8;
#              P2 r_a = (-0.5, -0.2) -> (E, D) gap -2;  mean -5
HAND = [
    ScoredPrompt(
        prompt="p1", responses=("a" * 10, "b" * 2, "c" * 6), scores=(1.0, 0.0, 0.7)
    ),
    ScoredPrompt(prompt="p2", responses=("d" * 5, "e" * 3), scores=(0.5, 0.4)),
]


def test_length_gap_hand_worked() -> None:
    gaps = [length_gap(HAND, alpha) for alpha in (0.0, 0.1, 0.2)]
    assert gaps == [5.0, 1.0, -5.0]


def test_alpha_selection_reduces_the_length_gap() -> None:
    alpha = choose_length_alpha(HAND, (0.0, 0.1, 0.2))
    assert alpha == 0.1
    assert abs(length_gap(HAND, alpha)) < abs(length_gap(HAND, 0.0))
    pairs = build_pairs(HAND, alpha=alpha)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("c" * 6, "b" * 2),
        ("e" * 3, "d" * 5),
    ]


def test_alpha_needs_a_buildable_pair() -> None:
    same = [ScoredPrompt(prompt="p", responses=("x", "x"), scores=(0.0, 0.0))]
    with pytest.raises(ValueError, match="no prompt gives a pair"):
        choose_length_alpha(same, (0.0, 0.5))
    with pytest.raises(ValueError, match="empty grid"):
        choose_length_alpha(HAND, ())


candidate_sets = st.lists(
    st.tuples(
        st.text(alphabet="abc", min_size=0, max_size=6),
        st.integers(min_value=-20, max_value=20),
    ),
    min_size=1,
    max_size=6,
)


@given(
    sets=st.lists(candidate_sets, min_size=1, max_size=4),
    alpha_tenths=st.integers(min_value=0, max_value=10),
)
def test_build_pairs_picks_argmax_and_argmin(sets, alpha_tenths) -> None:
    alpha = alpha_tenths / 10
    scored = [
        ScoredPrompt(
            prompt=[{"role": "user", "content": f"q{i}"}],
            responses=tuple(text for text, _ in items),
            scores=tuple(float(score) for _, score in items),
        )
        for i, items in enumerate(sets)
    ]
    pairs = build_pairs(scored, alpha=alpha)
    by_prompt = {p.prompt[0]["content"]: p for p in pairs}
    for i, items in enumerate(sets):
        regularised = [score - alpha * len(text) for text, score in items]
        top, bottom = max(regularised), min(regularised)
        first_top = items[regularised.index(top)][0]
        first_bottom = items[regularised.index(bottom)][0]
        key = f"q{i}"
        if first_top == first_bottom:
            assert key not in by_prompt
            continue
        pair = by_prompt[key]
        assert pair.chosen == [{"role": "assistant", "content": first_top}]
        assert pair.rejected == [{"role": "assistant", "content": first_bottom}]
    assert len(pairs) == len(by_prompt)


def test_build_pairs_skips_identical_candidates() -> None:
    scored = [
        ScoredPrompt(prompt="p", responses=("same", "same"), scores=(1.0, -1.0)),
        ScoredPrompt(prompt="q", responses=("x", "yy"), scores=(-1.0, 1.0)),
    ]
    pairs = build_pairs(scored, alpha=0.0)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("q", "yy", "x")]


def records(prefix: str, n: int) -> list[PreferenceRecord]:
    return [
        PreferenceRecord(prompt=f"{prefix}{i}", chosen="good", rejected="bad")
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("ratio", "new", "offline"),
    [(0.25, 6, 2), (0.5, 3, 3), (0.0, 4, 0), (0.75, 2, 6), (0.2, 8, 2)],
)
def test_replay_ratio_exact_on_counts(ratio: float, new: int, offline: int) -> None:
    assert offline_count(new, ratio) == offline
    mixed = replay(records("new", new), records("off", 10), ratio=ratio, seed=3)
    from_offline = [r for r in mixed if r.prompt.startswith("off")]
    assert len(mixed) == new + offline
    assert len(from_offline) == offline
    assert len(from_offline) / len(mixed) == ratio
    assert mixed[:new] == records("new", new)
    assert len({r.prompt for r in from_offline}) == offline  # no replacement


def test_replay_is_seeded_and_skips_generated_prompts() -> None:
    offline = records("new", 2) + records("off", 4)
    a = replay(records("new", 2), offline, ratio=0.5, seed=1)
    assert a == replay(records("new", 2), offline, ratio=0.5, seed=1)
    assert all(r.prompt.startswith("off") for r in a[2:])
    with pytest.raises(ValueError, match="needs 3 offline pairs, but only 2"):
        replay(
            records("new", 3), records("new", 2) + records("off", 2), ratio=0.5, seed=0
        )
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        replay(records("new", 1), [], ratio=1.0, seed=0)


def test_pairs_file_round_trips_through_load_records(tmp_path: Path) -> None:
    pairs = build_pairs(
        [
            ScoredPrompt(
                prompt=PROMPT, responses=("five", "six é"), scores=(2.0, -1.0)
            ),
            ScoredPrompt(
                prompt=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                responses=("Hello", "Hi there"),
                scores=(0.0, 1.0),
            ),
        ],
        alpha=0.0,
    )
    standard = PreferenceRecord(
        prompt="x", chosen="y", rejected="z", example_weight=0.5
    )
    # a weight column is given on every row or on none
    for name, written in (("pairs", pairs), ("weighted", [standard, standard])):
        path = write_pairs(tmp_path / f"{name}.jsonl", written)
        loaded = load_records(str(path))
        assert [(r.prompt, r.chosen, r.rejected, r.example_weight) for r in loaded] == [
            (r.prompt, r.chosen, r.rejected, r.example_weight) for r in written
        ]


def test_settings_refuse_unsupported_reference() -> None:
    with pytest.raises(ValueError, match="only 'previous' is supported"):
        DiceSettings(
            prompts="p.jsonl",
            offline=None,
            score_reference="ref",
            out="out",
            reference="initial",
        )
    with pytest.raises(ValueError, match="needs an --offline file"):
        DiceSettings(
            prompts="p.jsonl",
            offline=None,
            score_reference="ref",
            out="out",
            offline_ratio=0.5,
        )


def test_cli_one_round_on_tiny_model(tmp_path: Path, capsys) -> None:
    policy = build_tiny_model_dir(tmp_path / "policy", 0)
    sft = build_tiny_model_dir(tmp_path / "sft", 1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Add 2 and 3."})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Say hi."}]})
        + "\n"
    )
    offline = write_pairs(tmp_path / "offline.jsonl", records("off", 5))
    out = tmp_path / "dice"
    main(
        [
            "recipes/dpo.py",
            "--prompts",
            str(prompts),
            "--offline",
            str(offline),
            "--score-reference",
            str(sft),
            "--rounds",
            "1",
            "--samples",
            "2",
            "--max-new-tokens",
            "8",
            "--no-drop-truncated",
            "--offline-ratio",
            "0.5",
            "--alpha-grid",
            "0:0.05:0.01",
            "--out",
            str(out),
            "--quiet",
            f"--train.model={policy}",
            "--train.max_steps=1",
            "--train.batch_size=2",
            "--train.eval_fraction=0",
            "--train.eval_max_new_tokens=2",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    (round0,) = summary["rounds"]
    assert round0["train_steps"] == 1
    assert round0["new_pairs"] == 2
    assert round0["offline_pairs"] == 2
    assert round0["alpha"] in [0.0, 0.01, 0.02, 0.03, 0.04]
    pairs = load_records(str(out / "round-0" / "pairs.jsonl"))
    assert len(pairs) == 4
    assert [p.prompt for p in pairs[:2]] == [
        [{"role": "user", "content": "Add 2 and 3."}],
        [{"role": "user", "content": "Say hi."}],
    ]
    assert sum(isinstance(p.prompt, str) for p in pairs) == 2  # replayed offline
    candidates = [
        json.loads(line)
        for line in (out / "round-0" / "candidates.jsonl").read_text().splitlines()
    ]
    assert [len(c["scores"]) for c in candidates] == [2, 2]
    checkpoint = Path(summary["final_checkpoint"])
    assert (checkpoint / "model.safetensors").is_file()
    assert "dice round 0" in capsys.readouterr().out


def test_two_rounds_chain_policy_and_reference(tmp_path: Path) -> None:
    from mipo.tools.dice import run_dice

    policy = build_tiny_model_dir(tmp_path / "policy", 0)
    sft = build_tiny_model_dir(tmp_path / "sft", 1)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "One?"}, {"prompt": "Two?"}]))
    settings = DiceSettings(
        prompts=str(prompts),
        offline=None,
        score_reference=str(sft),
        out=str(tmp_path / "dice"),
        rounds=2,
        samples=2,
        max_new_tokens=8,
        drop_truncated=False,  # a tiny random model almost never stops
        alpha_grid=(0.0,),
    )
    overrides = {
        "train.model": str(policy),
        "train.max_steps": 1,
        "train.batch_size": 2,
        "train.eval_fraction": 0.0,
        # no warmup, so the one step moves the policy and round 1's rewards are
        # not all 0 (tied scores give no pair)
        "train.warmup_steps": 0,
        "train.warmup_ratio": 0.0,
        "train.learning_rate": 1e-3,
    }
    report = run_dice("recipes/dpo.py", settings, overrides, progress=False)
    first, second = report["rounds"]
    # round 1 samples with round 0's checkpoint and scores it against the model
    # round 0 trained from (its DPO reference): the previous iterate
    assert (first["policy"], first["score_reference"]) == (str(policy), str(sft))
    assert second["policy"] == first["checkpoint"]
    assert second["score_reference"] == str(policy)
    assert report["final_checkpoint"] == second["checkpoint"]
    saved = json.loads(Path(second["run_dir"], "config.json").read_text())
    assert saved["train"]["model"] == first["checkpoint"]


def test_cli_refuses_scoring_the_policy_against_itself(tmp_path: Path, capsys) -> None:
    policy = build_tiny_model_dir(tmp_path / "policy", 0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    argv = ["recipes/dpo.py", "--prompts", str(prompts), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--score-reference", str(policy), f"--train.model={policy}"])
    assert exit_info.value.code == 2
    assert "every implicit reward would be 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--score-reference", str(policy), "--train.dataset=x.jsonl"])
    assert "set by mipo.dice" in capsys.readouterr().err


# ------------------------------------------------ release fidelity (865aa6d)


class _ScriptedLM(torch.nn.Module):
    """``generate`` appends fixed continuations (one per returned sequence)."""

    def __init__(self, continuations: list[list[int]], eos: object = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.generation_config = type("Config", (), {"eos_token_id": eos})()
        self.seen: list[object] = []

    def generate(self, *, input_ids, generation_config, **_):
        self.seen.append(generation_config)
        repeats = generation_config.num_return_sequences
        prompts = input_ids.repeat_interleave(repeats, dim=0)
        width = max(len(c) for c in self.continuations)
        pad = generation_config.pad_token_id
        tail = [c + [pad] * (width - len(c)) for c in self.continuations]
        return torch.cat([prompts, torch.tensor(tail)], dim=1)


def test_samples_stop_at_any_end_of_turn_id_and_flag_truncation() -> None:
    """Stops are the tokenizer's EOS (2) and the model's generation-config ids
    (7 here, as Llama-3-Instruct lists <|eot_id|>); a sample with neither is
    truncated. ``strip`` trims the text as the release does."""
    tokenizer = tiny_chat_tokenizer()
    body = tokenizer("  hi ", add_special_tokens=False)["input_ids"]
    # as in generate, only a sequence that stopped is padded (pad = EOS here)
    model = _ScriptedLM([body + [2], body + [7, 9], body + [9, 9]], eos=[2, 7])
    assert stop_token_ids(model, tokenizer) == (2, 7)
    (row,) = sample_candidates(
        model, tokenizer, [PROMPT], num_samples=3, max_new_tokens=9, strip=True
    )
    assert row == [
        Candidate(text="hi", truncated=False),
        Candidate(text="hi", truncated=False),
        Candidate(text=tokenizer.decode(body + [9, 9]).strip(), truncated=True),
    ]
    assert model.seen[0].eos_token_id == [2, 7]
    # a fresh config: no repetition penalty, whatever the checkpoint's own says
    assert model.seen[0].repetition_penalty in (None, 1.0)
    (plain,) = sample_candidates(
        model, tokenizer, [PROMPT], num_samples=3, max_new_tokens=9
    )
    assert plain[0].text == "  hi "


def test_release_length_and_truncation_filters() -> None:
    """The release keeps 3 < len < 6700 characters among samples that stopped."""
    samples = [
        Candidate(text="abc", truncated=False),  # 3 chars: dropped
        Candidate(text="abcd", truncated=False),
        Candidate(text="x" * 6699, truncated=False),
        Candidate(text="x" * 6700, truncated=False),  # dropped
        Candidate(text="long and cut", truncated=True),  # dropped
    ]
    bounds = {"min_chars": RELEASE_SETTINGS["min_chars"]}
    bounds["max_chars"] = RELEASE_SETTINGS["max_chars"]
    assert keep_candidates(samples, **bounds) == ["abcd", "x" * 6699]
    assert len(keep_candidates(samples, drop_truncated=False, **bounds)) == 3
    assert len(keep_candidates(samples, drop_truncated=False)) == 5


def test_score_candidates_drops_prompts_with_too_few_kept(models) -> None:
    """min_candidates 2: the first prompt keeps one candidate and is dropped; the
    second is scored on its kept texts only (implicit rewards unchanged)."""
    policy, reference = models
    tokenizer = tiny_chat_tokenizer()
    settings = DiceSettings(
        prompts="p", offline=None, score_reference="r", out="o", min_chars=2
    )
    second = [{"role": "user", "content": "Hi"}]
    candidates = [
        [Candidate(text="abcd", truncated=False), Candidate(text="a", truncated=False)],
        [
            Candidate(text="yes", truncated=False),
            Candidate(text="cut", truncated=True),
            Candidate(text="no", truncated=False),
        ],
    ]
    scored, counts = score_candidates(
        policy, reference, tokenizer, [PROMPT, second], candidates, settings
    )
    assert counts == {
        "truncated_samples": 1,
        "length_filtered": 1,
        "dropped_prompts": 1,
    }
    (item,) = scored
    assert (item.prompt, item.responses) == (second, ("yes", "no"))
    expected = implicit_rewards(policy, reference, tokenizer, second, ["yes", "no"])
    assert list(item.scores) == expected


def test_release_alpha_scan_stops_at_the_first_local_minimum() -> None:
    """HAND's |gap| is 3 at alpha 0.06, 5 at 0.2 and 1 at 0.1: the release's scan
    stops at 0.2 (the gap grew) and keeps 0.06; the full scan finds 0.1."""
    assert [abs(length_gap(HAND, a)) for a in (0.06, 0.2, 0.1)] == [3.0, 5.0, 1.0]
    grid = (0.06, 0.2, 0.1)
    assert choose_length_alpha(HAND, grid, stop_early=True) == 0.06
    assert choose_length_alpha(HAND, grid) == 0.1


@pytest.mark.parametrize(
    ("new", "offline", "ratio", "kept", "replayed"),
    # int(10 * 0.5) = 5 and int(0.5 * 5 / 0.5) = 5; int(10 * 0.7) = 7 and
    # int(0.3 * 7 / 0.7) = int(3.0000000000000004) = 3; int(9 * 0.75) = 6 and
    # int(0.25 * 6 / 0.75) = 2; fewer generated pairs than wanted: min(5, 3) = 3
    [(8, 10, 0.5, 5, 5), (9, 10, 0.3, 7, 3), (9, 9, 0.25, 6, 2), (3, 10, 0.5, 3, 3)],
)
def test_release_replay_fixes_the_total_at_the_offline_size(
    new: int, offline: int, ratio: float, kept: int, replayed: int
) -> None:
    """The release's mix with ONE prompt pool for sampling and replay (its
    prompt.json and preference.json share prompts): a subset of the generated
    pairs, and offline pairs for other prompts only."""
    assert release_counts(new, offline, ratio) == (kept, replayed)
    generated = [
        PreferenceRecord(prompt=f"p{i}", chosen="gen a", rejected="gen b")
        for i in range(new)
    ]
    mixed = replay(
        generated, records("p", offline), ratio=ratio, seed=4, total="offline"
    )
    from_generated = [r for r in mixed if r.chosen == "gen a"]
    assert len(from_generated) == kept and len(mixed) == kept + replayed
    assert len({r.prompt for r in mixed}) == len(mixed)  # one pair per prompt
    assert mixed == replay(
        generated, records("p", offline), ratio=ratio, seed=4, total="offline"
    )
    assert replay(generated, [], ratio=0.0, seed=0, total="offline") == generated


def test_keep_all_replay_on_one_prompt_pool_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match="pass --replay-total offline"):
        replay(records("p", 8), records("p", 10), ratio=0.5, seed=0)


def test_release_preset_settings_and_training_overrides() -> None:
    """The preset resolves against recipes/dpo.py to the release's per-round
    DPO: beta 0.1, AdamW at a constant 5e-7 from step 0 (HF's "constant"
    ignores the release's 50 warmup steps), 300 steps of 32 pairs."""
    from mipo.training.cli import resolve
    from mipo.training.recipes import load_recipe

    settings = DiceSettings(
        prompts="p", offline="o", score_reference="r", out="x", **RELEASE_SETTINGS
    )
    assert (settings.samples, settings.temperature, settings.top_p) == (16, 0.7, 0.9)
    assert (settings.max_new_tokens, settings.offline_ratio) == (2048, 0.5)
    assert settings.replay_total == "offline" and settings.min_candidates == 8
    config, _, objective = resolve(load_recipe("dpo"), RELEASE_TRAIN_OVERRIDES)
    assert objective.beta == 0.1
    assert (config.learning_rate, config.lr_schedule) == (5e-7, "constant")
    assert (config.warmup_steps, config.warmup_ratio) == (0, 0.0)
    assert config.max_steps == 300 and config.optimizer == "adamw"
    assert config.batch_size * config.gradient_accumulation_steps == 32


def test_cli_preset_is_overridden_by_explicit_flags() -> None:
    from mipo.tools.dice import _parser, _settings

    argv = ["dpo", "--prompts", "p", "--score-reference", "r", "--out", "o"]
    args, _ = _parser().parse_known_args(
        [*argv, "--offline", "x", "--preset", "release", "--samples", "4"]
    )
    settings = _settings(args)
    assert (settings.samples, settings.temperature) == (4, 0.7)
    assert settings.drop_truncated and settings.alpha_stop_early
    args, _ = _parser().parse_known_args([*argv, "--no-drop-truncated"])
    default = _settings(args)
    assert (default.samples, default.temperature, default.drop_truncated) == (
        8,
        1.0,
        False,
    )
