"""The text side of the video-text model, built from any BERT-class masked language model.

ALBEF / UMT / VideoMamba split one BERT into two stacks (``fusion_layer=9`` of BERT-base's 12 in
UMT's ``configs/model.py``):

- the **unimodal text encoder**: the embeddings and the first ``L - fusion_layers`` layers; its
  ``[CLS]`` output is the sentence feature for contrastive learning;
- the **fusion encoder**: the last ``fusion_layers`` layers, each run as pretrained self-attention,
  then a *new* cross-attention to the video tokens (randomly initialised, with its own output
  projection, dropout and residual LayerNorm, as a BERT attention block has), then the pretrained
  feed-forward. It serves video-text matching and masked language modelling.

The pretrained model's own modules are called (``base_model.embeddings``,
``base_model.encoder.layer[i]`` and its ``attention`` / ``intermediate`` / ``output``, the MLM head)
rather than re-implementing the layer math from the weights: that keeps every attention backend the
model was loaded with (sdpa, eager, flash) and model-specific details (RoBERTa's padding-offset
positions, say) correct, and the weights stay in the Hugging Face model, so it saves as a standard
BERT directory. Attention masks are built with ``transformers.masking_utils.create_bidirectional_mask``,
exactly as ``BertModel.forward`` builds them for its backend.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["FusionCrossAttention", "TextSide", "load_text_model"]


def load_text_model(source: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                    local_files_only: bool = True) -> tuple[nn.Module, Any]:
    """``(AutoModelForMaskedLM, AutoTokenizer)`` from a local directory or hub id, float32."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    source = os.fspath(source)
    tok_src = os.fspath(tokenizer) if tokenizer else source
    for arg, value in (("text_encoder", source), ("tokenizer", tok_src)):
        if (os.path.isabs(value) or value.startswith(".")) and not os.path.isdir(value):
            raise OSError(f"{arg}: no directory {value!r} (expected a Hugging Face model directory or hub id)")
    try:
        mlm = AutoModelForMaskedLM.from_pretrained(source, local_files_only=local_files_only, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise OSError(f"text_encoder: cannot load a masked language model from {source!r} "
                      f"(local_files_only={local_files_only}): {e}") from e
    what = "tokenizer" if tokenizer else "text_encoder"
    try:
        tok = AutoTokenizer.from_pretrained(tok_src, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise OSError(f"{what}: cannot load a tokenizer from {tok_src!r} (local_files_only={local_files_only}): "
                      f"{e}") from e
    for name in ("cls_token_id", "pad_token_id", "mask_token_id"):
        if getattr(tok, name, None) is None:
            raise ValueError(f"tokenizer {tok_src!r} has no {name.removesuffix('_id')} token; a BERT-class "
                             "tokenizer ([CLS], [PAD], [MASK]) is needed for matching and masked language modelling")
    return mlm, tok


class FusionCrossAttention(nn.Module):
    """BERT-style cross-attention block: queries from the text, keys/values from the video tokens
    (their own width), multi-head softmax attention, then ``LayerNorm(dropout(dense(out)) + text)``.

    Initialised as BERT initialises new layers (normal(0, ``init_range``) weights, zero biases), as
    ALBEF's cross-attention layers, which are missing from the BERT checkpoint, are.
    """

    def __init__(self, hidden_size: int, video_width: int, num_heads: int, attn_dropout: float = 0.1,
                 hidden_dropout: float = 0.1, eps: float = 1e-12, init_range: float = 0.02) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cross-attention: hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(video_width, hidden_size)
        self.value = nn.Linear(video_width, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        for m in (self.query, self.key, self.value, self.dense):
            nn.init.normal_(m.weight, std=init_range)
            nn.init.zeros_(m.bias)

    def forward(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``text`` (B, L, H), ``video`` (B, N, D_v), ``video_mask`` (B, N) True/1 = attend, or None."""
        b, length, hidden = text.shape
        h = self.num_heads
        video = video.to(self.key.weight.dtype) if not torch.is_autocast_enabled(video.device.type) else video
        q = self.query(text).view(b, length, h, -1).transpose(1, 2)
        k = self.key(video).view(b, video.shape[1], h, -1).transpose(1, 2)
        v = self.value(video).view(b, video.shape[1], h, -1).transpose(1, 2)
        mask = None if video_mask is None else video_mask.to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, length, hidden)
        return self.norm(self.dropout(self.dense(out)) + text)


def _layer_output(out: Any) -> torch.Tensor:
    """A Hugging Face layer's hidden states (transformers 5 returns a tensor, 4.x a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class TextSide(nn.Module):
    """A pretrained BERT-class masked LM split into unimodal text layers and fusion layers.

    Args:
        mlm: an ``AutoModelForMaskedLM`` of the BERT layout (``base_model.embeddings``,
            ``base_model.encoder.layer[i]`` with ``attention`` / ``intermediate`` / ``output``, one
            head module beside the base model).
        fusion_layers: how many of the last layers become fusion layers (1 .. L-1).
        video_width: width of the video tokens the cross-attention reads.
    """

    def __init__(self, mlm: nn.Module, fusion_layers: int, video_width: int) -> None:
        super().__init__()
        base = getattr(mlm, "base_model", None)
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if base is None or not hasattr(base, "embeddings") or not isinstance(layers, nn.ModuleList) or not all(
                hasattr(m, a) for m in layers for a in ("attention", "intermediate", "output")):
            raise ValueError(f"text_encoder: {type(mlm).__name__} does not have the BERT layout "
                             "(base_model.embeddings, base_model.encoder.layer[i].attention/intermediate/output)")
        heads = [m for n, m in mlm.named_children() if n != mlm.base_model_prefix]
        if len(heads) != 1:
            raise ValueError(f"text_encoder: expected one masked-LM head beside the base model in "
                             f"{type(mlm).__name__}, found {[n for n, _ in mlm.named_children()]}")
        n = len(layers)
        if isinstance(fusion_layers, bool) or not isinstance(fusion_layers, int) or not 1 <= fusion_layers < n:
            raise ValueError(f"fusion_layers: expected an integer in [1, {n - 1}] for a text encoder with {n} "
                             f"layers, got {fusion_layers!r}")
        cfg = mlm.config
        self.mlm = mlm
        self.fusion_layers = fusion_layers
        self.num_text_layers = n - fusion_layers
        self.cross = nn.ModuleList(
            FusionCrossAttention(cfg.hidden_size, video_width, cfg.num_attention_heads,
                                 attn_dropout=cfg.attention_probs_dropout_prob,
                                 hidden_dropout=cfg.hidden_dropout_prob, eps=cfg.layer_norm_eps,
                                 init_range=getattr(cfg, "initializer_range", 0.02))
            for _ in range(fusion_layers)
        )
        self.head_name = next(nm for nm, _ in mlm.named_children() if nm != mlm.base_model_prefix)

    # ------------------------------------------------------------------ parts
    @property
    def config(self):
        return self.mlm.config

    @property
    def hidden_size(self) -> int:
        return int(self.mlm.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.mlm.config.vocab_size)

    @property
    def base(self) -> nn.Module:
        return self.mlm.base_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.mlm.base_model.encoder.layer

    @property
    def head(self) -> nn.Module:
        return getattr(self.mlm, self.head_name)

    def _self_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.mlm.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def _check_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype.is_floating_point:
            got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
                else type(input_ids).__name__
            raise ValueError(f"input_ids: expected an integer tensor of shape (B, L), got {got}")
        limit = getattr(self.mlm.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(f"input_ids: {input_ids.shape[1]} tokens exceed the text encoder's "
                             f"{limit} positions; truncate the text (max_text_len)")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (that of input_ids), "
                             f"got {tuple(attention_mask.shape)}")

    # ------------------------------------------------------------------ forward pieces
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal text encoder: (B, L) ids -> (B, L, H) outputs of layer ``L - fusion_layers``."""
        self._check_ids(input_ids, attention_mask)
        device = self.base.embeddings.word_embeddings.weight.device
        input_ids = input_ids.to(device)
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        hidden = self.base.embeddings(input_ids=input_ids)
        mask = self._self_mask(hidden, attention_mask)
        for layer in self.layers[: self.num_text_layers]:
            hidden = _layer_output(layer(hidden, mask))
        return hidden

    def fuse(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor | None, video_tokens: torch.Tensor,
             video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion encoder: unimodal text outputs (B, L, H) attend to video tokens (B, N, D_v) in the
        last ``fusion_layers`` layers -> (B, L, H)."""
        if video_tokens.ndim != 3 or video_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"video_tokens: expected (B={text_tokens.shape[0]}, N, D), got "
                             f"{tuple(video_tokens.shape)}")
        hidden = text_tokens
        if attention_mask is not None:
            attention_mask = attention_mask.to(hidden.device)
        mask = self._self_mask(hidden, attention_mask)
        for layer, cross in zip(self.layers[self.num_text_layers:], self.cross, strict=True):
            x = _layer_output(layer.attention(hidden, mask))
            x = cross(x, video_tokens, video_mask)
            hidden = layer.output(layer.intermediate(x), x)
        return hidden

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pretrained MLM head on (…, H) features -> (…, vocab)."""
        return self.head(hidden)

    def extra_repr(self) -> str:
        return f"text_layers={self.num_text_layers}, fusion_layers={self.fusion_layers}, hidden={self.hidden_size}"
