"""Shared video tokenisation, masking and head for every backbone.

Token layout (VideoMamba, spatial-first): per frame, patches in row-major order get the spatial
table ``pos_embed[1:]``; each frame gets ``temporal_pos_embedding[t]``; one cls token
(``cls_token + pos_embed[0]``) goes at the very front:
``[CLS, frame0 (h*w), frame1 (h*w), ...]``.

Masking (for pre-training): ``mask`` is a bool (B, t*h*w) tensor, True = hidden, with the same
number of hidden tokens per sample. Position embeddings are added before hidden tokens are
dropped, so the blocks see the visible tokens only, in their original order.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Literal

import torch
from torch import nn

from ..layers import PatchEmbed3D, resize_spatial_pos_embed, resize_temporal_pos_embed

GlobalPool = Literal["token", "avg"]


class VideoBackbone(nn.Module):
    """Base class: embeddings, input checks, masking and classification head.

    Subclasses implement ``run_blocks`` (the one block loop), ``final_norm`` and ``block_names()``,
    and name the final norm's module in ``final_norm_name``.
    """

    final_norm_name: str

    def __init__(self, img_size: int = 224, patch_size: int = 16, tubelet_size: int = 1,
                 in_chans: int = 3, num_frames: int = 8, embed_dim: int = 192,
                 num_classes: int = 400, drop_rate: float = 0.0, global_pool: GlobalPool = "token") -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool: expected 'token' or 'avg', got {global_pool!r}")
        self.global_pool = global_pool
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.in_chans = in_chans
        self.num_frames = num_frames
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[1] * self.grid[2], embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, self.grid[0], embed_dim))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.checkpoint_blocks = 0  # leading blocks recomputed in backward (set_grad_checkpointing)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # ------------------------------------------------------------------ input and tokens
    def check_input(self, video: torch.Tensor) -> tuple[int, int, int]:
        """Validate (B, C, T, H, W) and return the token grid (t, h, w)."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video: expected a 5-D tensor (B, {self.in_chans}, T, H, W), got {shape}")
        _, c, t, h, w = video.shape
        if c != self.in_chans:
            raise ValueError(f"video: expected {self.in_chans} channels at dim 1 of (B, C, T, H, W), got {c} "
                             f"(shape {tuple(video.shape)}); permute (B, T, C, H, W) inputs first")
        if t % self.tubelet_size:
            raise ValueError(f"video: frame count T={t} must be divisible by tubelet_size={self.tubelet_size}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"video: H and W ({h}x{w}) must be divisible by patch_size={self.patch_size}")
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def pos_embeds_for(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial and temporal tables for a token grid, resized on the fly when it differs."""
        t, h, w = grid
        spatial = resize_spatial_pos_embed(self.pos_embed, (h, w), old_hw=self.grid[1:])
        temporal = resize_temporal_pos_embed(self.temporal_pos_embedding, t)
        return spatial, temporal

    def embed(self, video: torch.Tensor, mask: torch.Tensor | None = None, temporal_pos: bool = True
              ) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens (B, 1 + visible, d) with the position embeddings added;
        ``temporal_pos=False`` leaves out the temporal one (images in the authors' video-text
        training, ``use_image``)."""
        grid = self.check_input(video)
        t, h, w = grid
        x = self.patch_embed(video)  # (B, d, t, h, w)
        b, d = x.shape[:2]
        spatial, temporal = self.pos_embeds_for(grid)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, t, h*w, d)
        x = x + spatial[:, None, 1:].to(x.dtype)
        if temporal_pos:
            x = x + temporal[:, :, None].to(x.dtype)
        x = x.reshape(b, t * h * w, d)
        if mask is not None:
            x = self.drop_masked(x, mask)
        cls = (self.cls_token + spatial[:, :1]).to(x.dtype).expand(b, -1, -1)
        return torch.cat([cls, x], dim=1)

    @staticmethod
    def drop_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Keep tokens where ``mask`` is False, preserving order. Equal counts per sample are required."""
        b, n, d = x.shape
        if mask.shape != (b, n) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor of shape {(b, n)}, got {mask.dtype} {tuple(mask.shape)}")
        keep = (~mask).sum(1)
        if not bool((keep == keep[0]).all()):
            raise ValueError("mask: every sample must hide the same number of tokens")
        return x[~mask].reshape(b, int(keep[0]), d)

    # ------------------------------------------------------------------ gradient checkpointing
    def set_grad_checkpointing(self, enable: bool = True, num_blocks: int | None = None) -> None:
        """Recompute block activations in backward instead of storing them (timm's API).

        ``num_blocks``: only the first k blocks in execution order (the authors' ``checkpoint_num``;
        the early blocks hold the activations of the longest-lived part of the graph); None = all.
        Gradients are unchanged: the recomputation replays the same RNG state (drop path).
        """
        total = len(self.block_names())
        if num_blocks is not None and num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0 or None, got {num_blocks}")
        self.checkpoint_blocks = (total if num_blocks is None else min(num_blocks, total)) if enable else 0

    def run_block(self, index: int, block: nn.Module, *args):
        """``block(*args)``, checkpointed when ``index`` (execution order) is among the first
        ``checkpoint_blocks`` and gradients are being recorded."""
        if index < self.checkpoint_blocks and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # ------------------------------------------------------------------ forward API
    def run_blocks(self, x: torch.Tensor, take: Collection[int] = (),
                   stop: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:  # pragma: no cover
        """The one block loop of a backbone: embedded tokens ``x`` through blocks ``0..stop``
        (execution order; None = all).

        Returns the stream after block ``stop`` (before the final norm; with drop path applied
        when the loop ran to the end, exactly what the final norm reads in training) and the
        residual stream after each block whose index is in ``take``, in order. Intermediate
        streams leave drop path out: they are features, read in eval mode where it is the identity.
        """
        raise NotImplementedError

    def final_norm(self, stream: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The final norm applied to the stream after the last block."""
        raise NotImplementedError

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded tokens -> normalised output tokens."""
        return self.final_norm(self.run_blocks(x)[0])

    def forward_features(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the final norm: (B, 1 + T'*h*w, d), or (B, 1 + visible, d) with a mask."""
        return self.forward_blocks(self.embed(video, mask))

    def block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """timm's ``indices``: None = every block, an int n = the last n blocks, a sequence = those
        blocks (negative counts from the end); sorted, each checked against the block count."""
        n = len(self.block_names())
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices: expected 1..{n} (the last n of {n} blocks), got {indices}")
            return list(range(n - indices, n))
        out = []
        for i in indices:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"indices: expected block indices in [-{n}, {n}), got {i!r}")
            out.append(i % n)
        return sorted(set(out))

    def forward_intermediates(self, video: torch.Tensor, indices: int | Sequence[int] | None = None, *,
                              norm: bool = False, mask: torch.Tensor | None = None, stop_early: bool = False,
                              intermediates_only: bool = False, temporal_pos: bool = True
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens (B, 1 + N, d) after chosen blocks, timm's convention.

        Each intermediate is the residual stream after that block (what the next block reads),
        passed through the final norm when ``norm``. Returns ``(final, intermediates)`` where
        ``final`` is :meth:`forward_features`' output, or only the list with
        ``intermediates_only``. ``stop_early`` runs no block past the last one asked for (then
        ``final`` is the final norm of that block's stream). ``temporal_pos``: as :meth:`embed`.
        """
        take = self.block_indices(indices)
        last = len(self.block_names()) - 1
        stop = (take[-1] if take else 0) if stop_early else last
        stream, inter = self.run_blocks(self.embed(video, mask, temporal_pos), take=frozenset(take), stop=stop)
        if norm:
            inter = [self.final_norm(t) for t in inter]
        if intermediates_only:
            return inter
        return self.final_norm(stream), inter

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier on the cls token (``global_pool="token"``, VideoMamba) or on the mean of the
        patch tokens (``"avg"``, VideoMAE / UMT fine-tuning)."""
        pooled = features[:, 1:].mean(1) if self.global_pool == "avg" else features[:, 0]
        x = self.head_drop(pooled)
        return x if pre_logits else self.head(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    # ------------------------------------------------------------------ optimisation helpers
    def block_names(self) -> list[str]:  # pragma: no cover - abstract
        """Module-name prefixes of the blocks in execution order (for layer-wise lr decay)."""
        raise NotImplementedError

    def modules_after_block(self, index: int) -> list[str]:
        """Names of the modules a feature read after block ``index`` (execution order, negative
        from the end) does not depend on: the later blocks and the final norm. A loss on such a
        feature alone leaves them without gradient."""
        names = self.block_names()
        return [*names[index % len(names) + 1:], self.final_norm_name]

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "temporal_pos_embedding"}

    def num_lr_layers(self) -> int:
        return len(self.block_names()) + 2

    # Whether the authors' released grouping gives every block its own layer. Their
    # ``get_num_layer_for_vit`` (videomamba/video_sm/optim_factory.py) keeps the ``blocks.*`` branch
    # (ViT) but has the ``layers.*`` branch (VideoMamba) commented out.
    released_block_layers: bool = False

    def lr_layer_id(self, name: str, mode: str = "per_block") -> int:
        """The lr layer of tensor ``name`` for layer-wise lr decay (``num_lr_layers()`` layers).

        ``per_block``: 0 for the embeddings (``cls_token``, ``pos_embed``, ``temporal_pos_embedding``,
        ``patch_embed``), 1..n for the blocks in execution order, n+1 for the final norm and head.

        ``released``: the grouping of the authors' released VideoMamba code. Only ``cls_token``,
        ``pos_embed`` and ``patch_embed`` are in layer 0 (scale ``layer_decay ** (n + 1)``);
        everything else -- every Mamba block (and every Transformer block of the hybrid), the final
        norm, the head and ``temporal_pos_embedding`` -- is in the last layer (scale 1). Models whose
        released code did decay per block (``released_block_layers``, the ViT) keep 1..n for blocks.
        """
        last = self.num_lr_layers() - 1
        blocks = self.block_names()
        if mode == "released":
            if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
                return 0
            if not self.released_block_layers:
                return last
        elif mode == "per_block":
            if name.startswith(("cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed")):
                return 0
        else:
            raise ValueError(f"layer decay mode: expected 'released' or 'per_block', got {mode!r}")
        for i, prefix in enumerate(blocks):
            if name.startswith(prefix + "."):
                return i + 1
        return last

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``model.safetensors`` + ``config.json`` (the Hugging Face hub layout), each atomically.

        ``config.json`` is ``{"library": "videomap", "name": ..., **constructor kwargs}``, what
        :func:`videomap.from_pretrained` needs to rebuild the model.
        """
        from ..io import save_safetensors, write_json

        directory = os.fspath(directory)
        config = getattr(self, "model_config", None)
        if not config:
            raise ValueError("save_pretrained needs a model built by videomap.create_model (no model_config)")
        save_safetensors(self.state_dict(), os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(directory, "config.json"), {"library": "videomap", **config})
        return directory

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload videomap model") -> str:
        """Upload :meth:`save_pretrained`'s files to the Hugging Face Hub repository ``repo_id``
        (created if missing); ``create_model(name, pretrained="hf-hub:" + repo_id)`` loads them.
        Returns the commit URL. Needs ``huggingface_hub`` and a login or ``token``."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, revision=revision,
                           commit_message=commit_message)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)


class WrapsBackbone:
    """Mixin for training wrappers (masked pre-training, self-distillation) that hold one backbone
    under the attribute ``backbone_attr``: the engine's questions about weight decay and layer-wise
    lr decay are answered by the backbone, with names prefixed; the wrapper's own modules (decoders,
    projections) train at the last layer's rate and skip decay for what they name themselves."""

    backbone_attr: str = "encoder"

    def no_weight_decay(self) -> set[str]:
        out: set[str] = set()
        for name, child in self.named_children():  # type: ignore[attr-defined]
            if hasattr(child, "no_weight_decay"):
                out |= {f"{name}.{n}" for n in child.no_weight_decay()}
        return out

    def num_lr_layers(self) -> int:
        return getattr(self, self.backbone_attr).num_lr_layers()

    def lr_layer_id(self, name: str, mode: str = "per_block") -> int:
        prefix = self.backbone_attr + "."
        if name.startswith(prefix):
            return getattr(self, self.backbone_attr).lr_layer_id(name[len(prefix):], mode)
        return self.num_lr_layers() - 1
