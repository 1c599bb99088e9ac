"""Loading pre-trained weights into a model: :func:`load_pretrained`.

Files are read with safetensors or ``torch.load(weights_only=True)`` (never executing pickled
code). Wrapper prefixes (``module.``, ``backbone.`` ...) are stripped, 2-D patch kernels of image
checkpoints are inflated, and position tables are resized to the model's grid, so 8-frame / 224px
weights load into a 64-frame / 112px model.

What may legitimately differ between a checkpoint and the model, and is never an error:

* the classifier head (``head.*``): missing, of another size, or present for a headless model;
* ``temporal_pos_embedding`` missing (image checkpoints; left as initialised, zeros);
* pre-training heads a full pre-training checkpoint carries (``decoder.*``, ``clip_decoder.*`` ...).

The authors' VideoMamba files name the final norm ``norm`` where this library has ``norm_f``
(``video_mm/models/backbones/videomamba/videomamba.py``, ``self.norm``); the key is renamed on
load. In their masked pre-training that norm never receives a gradient (the aligned features are
read before it), so the tensor carries its initial values either way.

Any other tensor whose shape differs means the checkpoint was written for another architecture:
that is an error unless the caller asks for a partial load (``partial=True``).

The public ways to get a model with weights are :func:`videomap.create_model` (``pretrained=``)
and :func:`videomap.from_pretrained`; this function loads into a model you already built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..io import load_safetensors
from ..layers import resize_spatial_pos_embed, resize_temporal_pos_embed

log = logging.getLogger(__name__)

__all__ = ["load_pretrained", "read_checkpoint"]

_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
# pre-training heads that full pre-training checkpoints carry besides the encoder (ours: decoder.*;
# UMT / VideoMamba masked pre-training: clip_decoder.*, clip_pos_embed, ...); dropped on load
_AUX_PREFIXES = ("decoder.", "clip_decoder.", "clip_pos_embed", "clip_img_pos_embed", "mask_token", "teacher.")
_HEAD_PREFIX = "head."
# keys a checkpoint may lack without being an error: the classifier, and the temporal table of an
# image checkpoint (VideoMamba initialises it to zeros before video fine-tuning)
_OPTIONAL_KEYS = ("temporal_pos_embedding",)
# (checkpoint name, our name) of tensors the authors' files name differently; renamed only when the
# model has ours and lacks theirs
_RENAMES = (("norm.weight", "norm_f.weight"), ("norm.bias", "norm_f.bias"))
_SHOWN = 3  # keys named per problem in messages; the rest are counted

_HINT = ("another architecture wrote it: build that model (from its save_pretrained config.json, or the CLI's "
         "--config with its job file), or pass partial=True to load only what fits")


def _is_head(key: str) -> bool:
    return key.startswith(_HEAD_PREFIX)


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat name->tensor dict from a safetensors / PyTorch file or a ``save_pretrained`` dir."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        return load_safetensors(path)
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


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``model.``, ``backbone.``, ``encoder.``), repeatedly."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (file or ``save_pretrained`` directory) under its name without
    wrapper prefixes: for callers that need the pre-training heads :func:`load_pretrained` skips."""
    return _strip_prefixes(_read_state_dict(path))


def _adapt_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the authors' final-norm key, resize position embeddings and inflate 2-D patch kernels
    to the model's shapes."""
    sd = dict(sd)
    own = model.state_dict()
    for theirs, ours in _RENAMES:
        if theirs in sd and ours in own and ours not in sd and theirs not in own:
            sd[ours] = sd.pop(theirs)
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


def _listing(what: str, keys: Sequence[str], describe: Callable[[str], str] = str) -> str:
    """``"312 shape mismatches: a (..) vs model (..), b ..., c ... and 309 more"``: short on purpose."""
    shown = ", ".join(describe(k) for k in keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what}: {shown}{more}"


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, strict: bool = True, partial: bool = False,
                    require_head: bool = False) -> tuple[list[str], list[str]]:
    """Load the weights at ``path`` into ``model``; returns ``(missing, unexpected)`` keys.

    ``path``: a safetensors or PyTorch file, or a directory written by ``save_pretrained``.

    * A shape mismatch outside the classifier head raises ``ValueError`` (the checkpoint belongs
      to another architecture) unless ``partial=True``, which loads every tensor that fits and
      logs a short warning about the rest.
    * ``strict`` (ignored with ``partial``): a missing (non-optional) or unexpected key raises;
      with ``strict=False`` it is logged and the model keeps its initial values there.
    * ``require_head``: the classifier head must be in the checkpoint with the model's shape
      (evaluating a trained classifier); by default a missing or differently sized head is left
      as initialised.

    ``missing`` lists every model tensor left as initialised (the head, skipped tensors ...);
    ``unexpected`` the checkpoint tensors that were not used (pre-training heads excluded).
    Messages name the counts and the first few keys only.
    """
    sd = _adapt_state_dict(read_checkpoint(path), model)
    own = model.state_dict()
    dropped = [k for k in sd if k not in own and k.startswith(_AUX_PREFIXES)]
    for k in dropped:
        sd.pop(k)
    mismatched = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    head_mismatch = [k for k in mismatched if _is_head(k)]
    bad = [k for k in mismatched if not _is_head(k)]
    shapes = {k: (tuple(sd[k].shape), tuple(own[k].shape)) for k in mismatched}
    # a headless model (num_classes=0) ignores a checkpoint's classifier
    extra_head = [k for k in sd if k not in own and _is_head(k)]
    for k in head_mismatch + bad + extra_head:
        sd.pop(k)
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    missing_required = [k for k in missing if k not in mismatched and not _is_head(k) and k not in _OPTIONAL_KEYS]
    head_missing = [k for k in own if _is_head(k) and k not in sd]

    def with_shapes(k: str) -> str:
        return f"{k} {shapes[k][0]} vs model {shapes[k][1]}"

    errors, notes = [], []
    if bad:
        (notes if partial else errors).append(_listing("shape mismatch" + ("es" if len(bad) > 1 else ""),
                                                       bad, with_shapes))
    if missing_required:
        (errors if strict and not partial else notes).append(_listing("missing", missing_required))
    if unexpected:
        (errors if strict and not partial else notes).append(_listing("unexpected", unexpected))
    if require_head and head_missing:
        head = _listing("classifier tensor" + ("s" if len(head_missing) > 1 else "")
                        + (" of another size" if head_mismatch else " missing"), head_missing,
                        lambda k: with_shapes(k) if k in shapes else k)
        (notes if partial else errors).append(head)
    name = type(model).__name__
    if errors:
        if bad:
            hint = _HINT
        elif require_head and head_missing and not (missing_required or unexpected):
            hint = ("build the model with the checkpoint's number of classes" if head_mismatch
                    else "it has no trained classifier (an encoder: fine-tune it first)")
        else:
            hint = "load it into the model that wrote it, or pass partial=True to load the rest"
        raise ValueError(f"{os.fspath(path)}: checkpoint does not fit {name}: {'; '.join(errors)} -- {hint}")
    model.load_state_dict(sd, strict=False)
    if notes:
        log.warning("%s: loaded %d of %d %s tensors; %s", os.fspath(path), len(own) - len(missing), len(own),
                    name, "; ".join(notes))
    info = []
    if head_missing and not require_head:
        info.append("classifier head " + ("re-initialised (other size)" if head_mismatch else "left as initialised"))
    if extra_head:
        info.append("checkpoint classifier ignored (model has no head)")
    if "temporal_pos_embedding" in missing and "temporal_pos_embedding" not in mismatched:
        info.append("temporal_pos_embedding left as initialised")
    if dropped:
        info.append(f"{len(dropped)} pre-training head tensors ignored ({dropped[0]}, ...)")
    if info:
        log.info("loaded %s into %s; %s", os.fspath(path), name, "; ".join(info))
    return missing, unexpected
