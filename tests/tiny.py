"""Tiny random causal LMs for fast tests: nothing is downloaded.

A Llama with grouped-query attention and tied embeddings, like SmolLM2, at toy
scale, paired with the byte-level ChatML tokenizer of
:mod:`mipo.data.tiny_tokenizer` (same special ids as SmolLM2).
"""

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mipo.data.tiny_tokenizer import TINY_VOCAB_SIZE, tiny_chat_tokenizer


def tiny_llama_config(**overrides: Any) -> LlamaConfig:
    """Hidden 64, 2 layers, 4 heads, 2 kv heads, tied embeddings (overridable)."""
    settings: dict[str, Any] = {
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    return LlamaConfig(**{**settings, **overrides})


def tiny_llama(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A seeded tiny random Llama in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def build_tiny_model_dir(path: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a seeded tiny Llama and the tiny ChatML tokenizer under ``path``."""
    tiny_llama(seed, **overrides).save_pretrained(path)
    tiny_chat_tokenizer().save_pretrained(path)
    return path
