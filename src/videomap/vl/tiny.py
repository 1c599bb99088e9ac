"""Tiny BERT-class text models built locally: a WordPiece vocabulary trained on given text and a
small random ``BertForMaskedLM`` saved next to it.

They exist because nothing may be downloaded at run time: the tests and the toy video-text demo
need a real ``AutoTokenizer`` / ``AutoModelForMaskedLM`` directory, and these make one from
scratch in about a second. The layout is the one ``from_pretrained`` expects of ``bert-base-uncased``,
so the code path that loads the real text encoder from disk is the one exercised here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_vocab(texts: Iterable[str], directory: str | os.PathLike, vocab_size: int = 1000,
                          model_max_length: int = 512) -> str:
    """Build a lower-casing BERT WordPiece vocabulary from ``texts`` and save ``vocab.txt`` plus the
    tokenizer files to ``directory``; returns the directory.

    The result is a ``BertTokenizer`` (``[PAD]`` = 0, ``[CLS]``, ``[SEP]``, ``[MASK]`` present) that
    ``AutoTokenizer.from_pretrained(directory, local_files_only=True)`` loads. ``vocab_size`` is an
    upper bound: a small corpus gives fewer entries (its words, their pieces and the characters).
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("texts: expected at least one sentence to build the vocabulary from")
    # Built, not trained: every word of the texts, and each character alone and as a ``##``
    # continuation so that unseen words still split into pieces. The library's WordPiece trainer
    # picks different merges from run to run; this gives every process the same ids.
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = {c for w in words for c in w}
    specials = list(BERT_SPECIAL_TOKENS)
    pieces = [*sorted(chars), *sorted("##" + c for c in chars), *sorted(words - chars)]  # words cut first
    entries = [*specials, *(p for p in pieces if p not in specials)][:max(vocab_size, len(specials))]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(os.fspath(directory), "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(entries) + "\n")
    tok = BertTokenizer(vocab=os.path.join(os.fspath(directory), "vocab.txt"), do_lower_case=True,
                        model_max_length=model_max_length)
    tok.save_pretrained(directory)
    return os.fspath(directory)


def build_tiny_bert(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike, hidden_size: int = 64,
                    num_layers: int = 4, heads: int = 4, *, max_positions: int = 128, dropout: float = 0.1,
                    seed: int = 0) -> str:
    """Save a randomly initialised ``BertForMaskedLM`` sized to the vocabulary in ``tokenizer_dir``
    into ``directory``, with the tokenizer copied beside it, so ``AutoModelForMaskedLM`` and
    ``AutoTokenizer`` both load it with ``local_files_only=True``. Returns the directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return os.fspath(directory)


__all__ = ["BERT_SPECIAL_TOKENS", "build_tiny_bert", "build_wordpiece_vocab"]
