"""encode_record: chat templates, EOS, truncation, weight alignment."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mipo.data import DataError, PreferenceRecord, collate, encode_record, load_records
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.training.assets import DIR_NAME, MARKER, cache_root

TINY = tiny_chat_tokenizer()
EOS = 2


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The cached SmolLM2 tokenizer; skip when the asset was never converted."""
    path = cache_root() / DIR_NAME
    if not (path / MARKER).is_file():
        pytest.skip(
            f"SmolLM2 not converted at {path} (run mipo.training.assets.smollm2_dir())"
        )
    return AutoTokenizer.from_pretrained(path)


def byte_ids(text: str) -> list[int]:
    """Oracle for the tiny tokenizer: one token per UTF-8 byte, ids in byte order."""
    return TINY(text, add_special_tokens=False)["input_ids"]


def chat(prompt: str, chosen: str, rejected: str, **kwargs: object) -> PreferenceRecord:
    return PreferenceRecord(
        prompt=[{"role": "user", "content": prompt}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        source="t.jsonl:3",
        **kwargs,  # type: ignore[arg-type]
    )


def test_tiny_tokenizer_is_byte_level_with_chatml_specials() -> None:
    assert (TINY.eos_token_id, TINY.pad_token_id, TINY.bos_token_id) == (2, 2, 1)
    assert len(byte_ids("héllo")) == len("héllo".encode())
    assert TINY.decode(byte_ids("héllo")) == "héllo"


def test_conversational_prompt_and_completion_follow_the_template() -> None:
    pair = encode_record(
        chat("Hi?", "Yes.", "No!"), TINY, max_length=256, max_prompt_length=128
    )
    assert TINY.decode(pair.prompt_ids) == (
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The turn ends with the EOS; ChatML's trailing newline is not a label.
    assert pair.chosen_ids == [*byte_ids("Yes."), EOS]
    assert pair.rejected_ids == [*byte_ids("No!"), EOS]
    assert pair.source == "t.jsonl:3"


def test_standard_record_gets_no_template_and_one_eos() -> None:
    record = PreferenceRecord(prompt="2 + 2 =", chosen=" 4", rejected="", source="s")
    pair = encode_record(record, TINY, max_length=64, max_prompt_length=32)
    assert pair.prompt_ids == byte_ids("2 + 2 =")
    assert pair.chosen_ids == [*byte_ids(" 4"), EOS]
    assert pair.rejected_ids == [EOS]  # an empty response is still one token long


def test_a_prompt_that_starts_with_the_bos_keeps_one_bos() -> None:
    """A tokenizer that adds a BOS (as Llama's do) and a standard prompt copied
    with its BOS text: one BOS, as for the same prompt without it."""
    from tokenizers import processors

    tokenizer = tiny_chat_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    plain = PreferenceRecord(prompt="2 + 2 =", chosen=" 4", rejected=" 5")
    copied = PreferenceRecord(
        prompt=f"{tokenizer.bos_token}2 + 2 =", chosen=" 4", rejected=" 5"
    )
    ids = [
        encode_record(r, tokenizer, max_length=64, max_prompt_length=32).prompt_ids
        for r in (plain, copied)
    ]
    assert ids[0][0] == bos and ids[0][1] != bos  # the tokenizer adds one
    assert ids[1] == ids[0]


def test_eos_already_present_is_not_doubled() -> None:
    record = PreferenceRecord(
        prompt="p", chosen="a<|im_end|>", rejected="b", source="s"
    )
    pair = encode_record(record, TINY, max_length=64, max_prompt_length=32)
    assert pair.chosen_ids == [*byte_ids("a"), EOS]


@given(
    prompt=st.integers(1, 40),
    chosen=st.integers(0, 40),
    rejected=st.integers(0, 40),
    max_length=st.integers(2, 60),
    prompt_share=st.floats(0.0, 1.0),
    weights=st.lists(st.floats(-3.0, 3.0, width=32), min_size=40, max_size=40),
)
def test_truncation_keeps_prompt_end_and_completion_start(
    prompt: int,
    chosen: int,
    rejected: int,
    max_length: int,
    prompt_share: float,
    weights: list[float],
) -> None:
    max_prompt_length = 1 + int(prompt_share * (max_length - 2))
    prompt_text = "".join(chr(ord("a") + i % 26) for i in range(prompt))
    chosen_text, rejected_text = "x" * chosen, "y" * rejected
    record = PreferenceRecord(
        prompt=prompt_text,
        chosen=chosen_text,
        rejected=rejected_text,
        chosen_token_weights=tuple(weights[:chosen]),  # one short: EOS weight 0
        rejected_kl_weights=tuple(weights[: rejected + 1]),
        source="s",
    )
    pair = encode_record(
        record, TINY, max_length=max_length, max_prompt_length=max_prompt_length
    )
    # Oracle from the documented rules, with one token per character.
    full_prompt = byte_ids(prompt_text)
    full_chosen = [*byte_ids(chosen_text), EOS]
    full_rejected = [*byte_ids(rejected_text), EOS]
    kept_prompt = prompt
    if prompt + max(chosen, rejected) + 1 > max_length:
        kept_prompt = min(prompt, max_prompt_length)
    budget = max_length - kept_prompt
    assert pair.prompt_ids == full_prompt[prompt - kept_prompt :]
    assert pair.chosen_ids == full_chosen[:budget]
    assert pair.rejected_ids == full_rejected[:budget]
    assert pair.chosen_token_weights == [*weights[:chosen], 0.0][:budget]
    assert pair.rejected_kl_weights == weights[: rejected + 1][:budget]
    assert pair.rejected_token_weights is None
    assert len(pair.prompt_ids) + max(
        len(pair.chosen_ids), len(pair.rejected_ids)
    ) <= max(max_length, prompt + max(chosen, rejected) + 1)
    assert len(pair.chosen_ids) >= 1 and len(pair.rejected_ids) >= 1


def test_weight_column_of_wrong_length_names_source_and_field() -> None:
    record = chat("q", "ab", "c", rejected_token_weights=(1.0, 1.0, 1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"^t\.jsonl:3: field 'rejected_weight': has 5"):
        encode_record(record, TINY, max_length=64, max_prompt_length=32)


def test_template_that_is_not_prefix_consistent_is_an_error() -> None:
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<gen>{% endif %}"
    )
    with pytest.raises(
        DataError, match=r"^t\.jsonl:3: field 'chosen': the chat template"
    ):
        encode_record(
            chat("q", "a", "b"), tokenizer, max_length=64, max_prompt_length=32
        )


def test_conversational_record_without_chat_template_is_an_error() -> None:
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="cannot apply a chat template"):
        encode_record(
            chat("q", "a", "b"), tokenizer, max_length=64, max_prompt_length=32
        )


def test_template_that_raises_is_reported_with_the_source() -> None:
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ raise_exception('a system message must come first') }}{% endif %}"
    )
    with pytest.raises(DataError, match=r"^t\.jsonl:3: the chat template rejected"):
        encode_record(
            chat("q", "a", "b"), tokenizer, max_length=64, max_prompt_length=32
        )


def test_empty_standard_prompt_is_an_error() -> None:
    record = PreferenceRecord(prompt="", chosen="a", rejected="b", source="s")
    with pytest.raises(DataError, match="field 'prompt': tokenises to no tokens"):
        encode_record(record, TINY, max_length=64, max_prompt_length=32)


def test_lengths_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        encode_record(chat("q", "a", "b"), TINY, max_length=8, max_prompt_length=8)


def test_smollm2_chatml_completion_ends_with_its_eos(shared_data: Path) -> None:
    tokenizer = smollm2_tokenizer()
    assert tokenizer.eos_token_id == 2
    hh = load_records(str(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz"))[:20]
    for record in [*hh, *load_records("builtin:arithmetic?n=20")]:
        pair = encode_record(record, tokenizer, max_length=4096, max_prompt_length=2048)
        prompt_text = tokenizer.decode(pair.prompt_ids)
        assert prompt_text.startswith("<|im_start|>system\n")
        assert prompt_text.endswith("<|im_start|>assistant\n")
        for ids, response in (
            (pair.chosen_ids, record.chosen),
            (pair.rejected_ids, record.rejected),
        ):
            assert ids[-1] == 2 and ids.count(2) == 1, record.source
            assert tokenizer.decode(ids) == response[0]["content"] + "<|im_end|>"


@pytest.mark.parametrize(
    "name",
    [
        "hh-rlhf-harmless-base-test.jsonl.gz",
        "dpo-en-demo-300.json",
        "stack-exchange-paired-tiny.json",
    ],
)
def test_every_shared_record_encodes_and_collates(shared_data: Path, name: str) -> None:
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set MIPO_SHARED_DATA)")
    pairs = [
        encode_record(record, TINY, max_length=512, max_prompt_length=256)
        for record in load_records(str(path))
    ]
    for pair in pairs:
        assert 1 <= len(pair.prompt_ids) <= 512 - 1
        longest = max(len(pair.chosen_ids), len(pair.rejected_ids))
        assert len(pair.prompt_ids) + longest <= 512
        assert min(len(pair.chosen_ids), len(pair.rejected_ids)) >= 1
    batch = collate(pairs[:8], pad_token_id=TINY.pad_token_id)
    assert batch.chosen.input_ids.shape == batch.rejected.input_ids.shape
