"""A tiny offline chat tokenizer for tests and smoke runs.

Byte-level BPE with no merges: every UTF-8 byte is one token (ids 3..258), plus
the ChatML special tokens ``<|endoftext|>`` (0), ``<|im_start|>`` (1, bos) and
``<|im_end|>`` (2, eos and pad), the same special ids as SmolLM2. Its chat
template renders ChatML without a default system prompt. Built in memory from the
``tokenizers`` package, so nothing is downloaded; pair it with a tiny random model
whose vocabulary has at least :data:`TINY_VOCAB_SIZE` entries.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML: ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per message."""


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level ChatML tokenizer (eos = pad = ``<|im_end|>`` = 2)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=False
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


__all__ = ["CHATML_TEMPLATE", "TINY_VOCAB_SIZE", "tiny_chat_tokenizer"]
