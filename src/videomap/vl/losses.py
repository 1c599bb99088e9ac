"""Video-text losses: contrastive (VTC), hard negatives for matching (VTM), masked language
modelling masks (MLM) and unmasked token alignment (UTA).

Facts followed (UMT / VideoMamba ``video_mm/models/criterions.py`` and ``models/umt_videomamba.py``):

- VTC: features L2-normalised, similarities divided by a learned temperature (initial 0.07, clamped
  to [0.001, 0.5] before every step), targets spread uniformly over every pair that shows the same
  video (``idx``), symmetric mean of the video->text and text->video cross-entropies, features
  gathered from every process first.
- VTM negatives: per text a video, per video a text, drawn with probability ``softmax(sim)`` over
  the *local* batch with every same-video pair excluded (``vtm_hard_neg=True``), or uniformly
  among them.
- MLM masks: each token with probability ``mlm_prob`` (0.5 in UMT), never padding or ``[CLS]``;
  80% become ``[MASK]``, 10% a random id, 10% stay.
- UTA: the visible student tokens, through a Linear + LayerNorm head, aligned to the teacher's
  tokens at the same positions by mean(2 - 2 cos); the pre-training objective
  :func:`videomap.pretrain.objectives.alignment_loss` is exactly that and is reused.

Gathered contrastive loss: every process computes the loss of the whole global batch, so the value
is the single-process value. Its backward sums the gradient arriving at the gathered features over
all processes and keeps the local rows: all processes hold the same loss, so the local features get
``world_size`` times their share, and DDP's gradient *averaging* then yields exactly the gradient of
single-process training on the concatenated batch (for the temperature as well, which is not
gathered). The authors' ``AllGather`` keeps only the local slice without the sum
(``video_mm/models/utils.py``, ``AllGather.backward``), which under DDP averaging scales the
contrastive gradient reaching the encoders by ``1/world_size`` while the temperature's is not
scaled: ``grad="released"`` reproduces it.

Per-frame video embeddings (the authors' ``keep_temporal``, ``get_sim`` with ``agg_method="mean"``):
the similarity of a video to a text is the mean over frames of the cosine between each frame's
embedding and the text. As the text vector is unit length, that equals the dot product with the
mean of the unit frame vectors, so :func:`video_embedding` reduces ``(B, T, D)`` to that mean once
and every consumer (VTC, hard negatives, retrieval) takes dot products as before.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..pretrain.objectives import alignment_loss
from ..pretrain.teachers import TeacherOutput, clip_level_cls

__all__ = [
    "GATHER_GRADS", "IGNORE_INDEX", "TEMP_RANGE", "GatherGrad", "gather_features", "gather_ids", "mlm_mask",
    "positive_mask", "sample_negatives", "uta_loss", "video_embedding", "vtc_loss", "vtm_labels",
]

TEMP_RANGE = (0.001, 0.5)  # UMT clip_contrastive_temperature(min_val=0.001, max_val=0.5)
GatherGrad = Literal["full", "released"]  # the gradient through the gather (gather_features)
GATHER_GRADS: tuple[str, ...] = get_args(GatherGrad)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(x: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """all_gather along dim 0 with possibly different row counts per process."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    padded = x if x.shape[0] == top else torch.cat([x, x.new_zeros(top - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return [p[:c] for p, c in zip(parts, counts, strict=True)], counts


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, reduce: bool) -> torch.Tensor:
        parts, counts = _gather_rows(x)
        rank = dist.get_rank()
        ctx.start = sum(counts[:rank])
        ctx.rows = counts[rank]
        ctx.reduce = reduce
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        if ctx.reduce:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.start + ctx.rows], None


def gather_features(x: torch.Tensor, grad: GatherGrad = "full") -> torch.Tensor:
    """Concatenate ``x`` (N_local, ...) from every process along dim 0, in rank order, with the
    gradient flowing back to the local rows: summed over processes (``grad="full"``) or this
    process's only (``"released"``); see the module docstring for the scales. Identity without a
    process group. Processes may hold different row counts."""
    if grad not in GATHER_GRADS:
        raise ValueError(f"grad: expected one of {', '.join(GATHER_GRADS)}, got {grad!r}")
    if _world() == 1:
        return x
    return _GatherWithGrad.apply(x, grad == "full")


@torch.no_grad()
def gather_ids(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor without gradient (video ids) from every process, in rank order."""
    if _world() == 1:
        return x
    return torch.cat(_gather_rows(x)[0], dim=0)


def positive_mask(n: int, idx: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """(n, n) bool, True where video i and text j show the same video: equal ``idx``, or the
    diagonal when ``idx`` is None."""
    if idx is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    idx = idx.reshape(-1)
    if idx.numel() != n:
        raise ValueError(f"idx: expected {n} video ids (one per pair), got {idx.numel()}")
    return idx[:, None] == idx[None, :]


def video_embedding(v: torch.Tensor) -> torch.Tensor:
    """The video side of a dot-product similarity: ``(B, D)`` L2-normalised, or per-frame
    ``(B, T, D)`` reduced to the mean of the L2-normalised frames (its dot product with a unit
    text vector is the mean per-frame cosine, the authors' ``get_sim``)."""
    if v.ndim not in (2, 3):
        raise ValueError(f"video embedding: expected (B, D) or per-frame (B, T, D), got {tuple(v.shape)}")
    v = F.normalize(v, dim=-1)
    return v.mean(1) if v.ndim == 3 else v


def _check_pair(v: torch.Tensor, t: torch.Tensor) -> None:
    if v.ndim not in (2, 3) or t.ndim != 2 or v.shape[0] != t.shape[0] or v.shape[-1] != t.shape[-1]:
        raise ValueError(f"vtc_loss: expected video features (B, D) or (B, T, D) and text features (B, D), got "
                         f"{tuple(v.shape)} and {tuple(t.shape)}")


def vtc_loss(v: torch.Tensor, t: torch.Tensor, temp: torch.Tensor | float, gather: bool = True,
             idx: torch.Tensor | None = None, gather_grad: GatherGrad = "full") -> torch.Tensor:
    """Symmetric InfoNCE between video features ``v`` (B, D), or per-frame (B, T, D) (similarities
    averaged over frames), and text features ``t`` (B, D); pair ``i`` is (v[i], t[i]). Features are
    L2-normalised here (a no-op for normalised inputs).

    ``idx`` (B,): video ids; pairs sharing an id are all positives, the target spread evenly over
    them (several captions of one video in a batch). ``gather``: compute over the batch of all
    processes (identical to ``gather=False`` in a single process); ``gather_grad``: the gradient
    through the gather, ``"full"`` or ``"released"`` (:func:`gather_features`).
    """
    _check_pair(v, t)
    v = video_embedding(v.float())
    t = F.normalize(t.float(), dim=-1)
    if gather and _world() > 1:
        v, t = gather_features(v, gather_grad), gather_features(t, gather_grad)
        idx = None if idx is None else gather_ids(idx.to(v.device))
    with torch.autocast(v.device.type, enabled=False):  # similarities in fp32, as the authors' get_sim
        sim = v @ t.T / temp
    pos = positive_mask(sim.shape[0], idx, sim.device).float()
    target = pos / pos.sum(1, keepdim=True)
    loss_v2t = -(F.log_softmax(sim, dim=1) * target).sum(1).mean()
    loss_t2v = -(F.log_softmax(sim.T, dim=1) * target.T).sum(1).mean()
    return (loss_v2t + loss_t2v) / 2


@torch.no_grad()
def sample_negatives(sim_v2t: torch.Tensor, idx: torch.Tensor | None = None, hard: bool = True,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one negative per pair from the local similarities ``sim_v2t`` (B, B), video i vs text j.

    Returns ``(video_for_text, text_for_video)``, each (B,) indices: a video that does not show
    text i's video, and a text that does not describe video i. ``hard``: drawn with probability
    ``softmax(sim)`` over the allowed candidates (ALBEF/UMT hard negatives); else uniformly among
    them. A pair whose every other item shows the same video has no true negative; it falls back to
    any other item (label noise limited to such batches). Needs B >= 2.
    """
    b = sim_v2t.shape[0]
    if sim_v2t.ndim != 2 or sim_v2t.shape[1] != b:
        raise ValueError(f"sim_v2t: expected a square (B, B) similarity matrix, got {tuple(sim_v2t.shape)}")
    if b < 2:
        raise ValueError("video-text matching needs at least 2 pairs per batch (one negative each); drop the "
                         "last incomplete batch or set the vtm weight to 0")
    eye = torch.eye(b, dtype=torch.bool, device=sim_v2t.device)
    banned = positive_mask(b, idx, sim_v2t.device)
    no_negative = banned.all(1)
    banned = torch.where(no_negative[:, None], eye, banned)  # fall back: anything but itself
    sim = sim_v2t.float()
    out = []
    for s in (sim.T, sim):  # rows = texts (choose a video), rows = videos (choose a text)
        logits = s if hard else torch.zeros_like(s)
        probs = torch.softmax(logits.masked_fill(banned, float("-inf")), dim=1)
        probs = torch.nan_to_num(probs, nan=0.0)
        draw = torch.multinomial(probs.cpu() if generator is not None else probs, 1, generator=generator)
        out.append(draw.reshape(b).to(sim_v2t.device))
    return out[0], out[1]


def vtm_labels(b: int, device=None) -> torch.Tensor:
    """Labels of the 3-way matching batch [positives, (negative video, text), (video, negative text)]:
    1 for the first ``b``, 0 for the ``2b`` negatives."""
    labels = torch.zeros(3 * b, dtype=torch.long, device=device)
    labels[:b] = 1
    return labels


@torch.no_grad()
def mlm_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prob: float, mask_token_id: int,
             vocab_size: int, protected_ids: tuple[int, ...] = (), generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``(masked_ids, labels)``. Each real token (``attention_mask`` 1) whose id is
    not in ``protected_ids`` is chosen with probability ``prob``; of those 80% become
    ``mask_token_id``, 10% a random id in ``[0, vocab_size)``, 10% stay. ``labels`` hold the
    original id at chosen positions and ``IGNORE_INDEX`` elsewhere."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"mlm_prob: expected 0 < p < 1, got {prob}")
    ids = input_ids.clone()
    shape, device = ids.shape, ids.device

    def coin(p: float) -> torch.Tensor:
        return (torch.rand(shape, generator=generator) < p).to(device)

    chosen = coin(prob)
    if attention_mask is not None:
        chosen &= attention_mask.to(device).bool()
    for tid in protected_ids:
        if tid is not None:
            chosen &= ids != tid
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = coin(0.8) & chosen
    ids[to_mask] = mask_token_id
    to_random = coin(0.5) & chosen & ~to_mask
    random_ids = torch.randint(vocab_size, shape, generator=generator).to(device)
    ids[to_random] = random_ids[to_random]
    return ids, labels


def uta_loss(student: torch.Tensor, teacher: TeacherOutput, patch_targets: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """Unmasked token alignment: mean(2 - 2 cos) between the student's aligned tokens (B, 1 + visible,
    C; cls first, L2-normalised) and the teacher's clip-level cls and its patch features
    ``patch_targets`` (B, T', hw, C) at the visible positions of ``mask`` (B, T'*hw, True = hidden)."""
    return alignment_loss(student, patch_targets, clip_level_cls(teacher), mask)
