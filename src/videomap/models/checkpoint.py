"""Reading checkpoints safely and fitting them to a model.

Files are read with safetensors or ``torch.load(weights_only=True)`` (never executing pickled
code). Position embeddings are resized to the model's grid, so 8-frame / 224px weights load into
a 64-frame / 112px model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..layers import resize_spatial_pos_embed, resize_temporal_pos_embed

log = logging.getLogger("videomap.models")

PREFIXES = ("module.", "model.", "backbone.", "encoder.")
# pre-training heads that full pre-training checkpoints carry besides the encoder (ours: decoder.*;
# UMT / VideoMamba masked pre-training: clip_decoder.*, clip_pos_embed, ...); dropped on load
AUX_PREFIXES = ("decoder.", "clip_decoder.", "clip_pos_embed", "clip_img_pos_embed", "mask_token", "teacher.")
HEAD_KEYS = ("head.weight", "head.bias")
# keys a checkpoint may lack without being an error: the classifier, and the temporal table of an
# image checkpoint (VideoMamba initialises it to zeros before video fine-tuning)
OPTIONAL_KEYS = HEAD_KEYS + ("temporal_pos_embedding",)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat name->tensor dict from a safetensors / PyTorch file or a ``save_pretrained`` dir."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: not a loadable weights-only PyTorch checkpoint ({e})") from e
    for key in ("model", "state_dict", "module", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``model.``, ``backbone.``, ``encoder.``), repeatedly."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def adapt_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize position embeddings and inflate 2-D patch kernels to the model's shapes."""
    sd = dict(sd)
    own = model.state_dict()
    grid = getattr(model, "grid", None)
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape and grid:
        sd["pos_embed"] = resize_spatial_pos_embed(sd["pos_embed"], grid[1:])
    key = "temporal_pos_embedding"
    if key in sd and key in own and sd[key].shape != own[key].shape:
        sd[key] = resize_temporal_pos_embed(sd[key], own[key].shape[1])
    key = "patch_embed.proj.weight"
    if key in sd and key in own and sd[key].ndim == 4 and own[key].ndim == 5:
        # centre inflation: the 2-D kernel sits at the middle time step, zeros elsewhere
        w = torch.zeros(own[key].shape, dtype=sd[key].dtype)
        w[:, :, own[key].shape[2] // 2] = sd[key]
        sd[key] = w
    return sd


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> tuple[list, list]:
    """Load ``path`` into ``model``; the classifier head may always be missing or mismatched.

    Returns (missing, unexpected). With ``strict`` any other mismatch raises a ValueError naming
    the keys and shapes (an image checkpoint may also lack ``temporal_pos_embedding``).
    """
    sd = adapt_state_dict(strip_prefixes(read_state_dict(path)), model)
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and k.startswith(AUX_PREFIXES)]
    for k in dropped:
        sd.pop(k)
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    head_mismatch = [k for k in mismatched if k in HEAD_KEYS]
    for k in head_mismatch:
        sd.pop(k)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [k for k in mismatched if k not in HEAD_KEYS]
    problems = []
    if bad:
        problems.append("shape mismatch: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in bad))
    non_head_missing = [k for k in missing if k not in OPTIONAL_KEYS]
    if non_head_missing:
        problems.append("missing: " + ", ".join(non_head_missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    if problems and strict:
        raise ValueError(f"{path}: checkpoint does not fit {type(model).__name__}; " + "; ".join(problems))
    for k in bad:
        sd.pop(k)
    model.load_state_dict(sd, strict=False)
    notes = problems + ([f"left as initialised: {', '.join(missing)}"] if missing and not problems else [])
    if dropped:
        notes.append(f"pre-training heads ignored: {len(dropped)} tensors ({dropped[0]}, ...)")
    if notes:
        (log.warning if problems else log.info)("loaded %s into %s; %s", path, type(model).__name__, "; ".join(notes))
    return missing, unexpected
