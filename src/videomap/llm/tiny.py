"""Tiny language models built locally: a word-level tokenizer trained on given text and a small
random causal LM saved next to it.

They exist because nothing may be downloaded at run time: the tests and the toy Video-LLM demo
need a real ``AutoTokenizer`` / ``AutoModelForCausalLM`` directory, and these make one from
scratch in well under a second. The layout is what ``from_pretrained`` expects of any hub model,
so every code path that loads a 7B model from disk is the one exercised here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")

# a plain two-role template; a tokenizer with a template exercises the chat-template path
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_word_tokenizer(texts: Iterable[str], directory: str | os.PathLike,
                         chat_template: str | None = DEFAULT_CHAT_TEMPLATE) -> str:
    """Build a lower-casing word-level tokenizer (punctuation split off) from ``texts``, save it to
    ``directory`` and return the path. ``chat_template=None`` saves one without a template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    extra = ["user", "assistant", "system", ":"]  # the template's words always have an id
    words: set[str] = set()
    for text in [*texts, " ".join(extra)]:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    # ids from sorted words: the same text gives the same ids in every process (the library's
    # trainer breaks frequency ties differently from run to run)
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *sorted(words - set(SPECIAL_TOKENS))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    os.makedirs(directory, exist_ok=True)
    fast.save_pretrained(directory)
    return str(directory)


def build_tiny_causal_lm(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike, *,
                         hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, max_positions: int = 2048,
                         seed: int = 0) -> str:
    """Save a randomly initialised Llama-architecture causal LM sized to the tokenizer in
    ``tokenizer_dir`` into ``directory``, with the tokenizer copied beside it, so
    ``AutoModelForCausalLM`` and ``AutoTokenizer`` both load it with ``local_files_only=True``.

    Llama because ``AutoTokenizer`` keeps a word-level tokenizer beside it as it is; for some
    other model types (Qwen2 in transformers 5) it substitutes that family's own tokenizer class.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        num_key_value_heads=num_heads, max_position_embeddings=max_positions,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)
