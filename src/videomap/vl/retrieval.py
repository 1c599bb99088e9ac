"""Text-video retrieval evaluation: recall metrics, VTM re-ranking and the evaluation loop.

Protocol (as in the UMT / VideoMamba ``video_mm`` retrieval evaluation): every video is embedded once
and every text once, cosine similarities rank all videos for each text (t2v) and all texts for each
video (v2t); optionally the top ``k`` candidates of every query are re-scored with the video-text
matching head (VTM) through the fusion layers, in each direction separately.

Ranks and ties
    The rank of a query is the 0-based position of its *best* ground-truth item (a text with several
    ground-truth videos, or a video with several captions, is answered by whichever comes first):
    the number of non-ground-truth candidates scoring **at least** as high as that item. Ties with
    a wrong candidate therefore count against the query (a model that scores everything equally gets
    R@1 = 0, not a lucky 100); ties among ground-truth items do not matter. A query whose
    ground-truth items all score ``-inf`` (an unreadable video) is not found: a miss at every k, rank
    ``C + 1`` (``C`` candidates) in the median / mean rank. R@k is the percentage of queries with
    rank < k.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..engine.distributed import module_device, module_dtype
from ..io import write_json
from .data import RetrievalSet, collate_retrieval_videos
from .losses import video_embedding

__all__ = ["best_match_ranks", "evaluate_retrieval", "rerank_with_vtm", "retrieval_metrics"]

logger = logging.getLogger(__name__)

GroundTruth = Sequence[int | Sequence[int]] | Mapping[int, int | Sequence[int]]


def _gt_mask(gt: GroundTruth, num_queries: int, num_candidates: int, name: str) -> torch.Tensor:
    """``(Q, C)`` bool mask of the ground-truth items of every query, validated."""
    if isinstance(gt, Mapping):
        missing = [q for q in range(num_queries) if q not in gt]
        if missing:
            raise ValueError(f"{name}: no ground truth for queries {missing[:5]} (expected keys 0..{num_queries - 1})")
        gt = [gt[q] for q in range(num_queries)]
    if len(gt) != num_queries:
        raise ValueError(f"{name} has {len(gt)} entries but the similarity matrix has {num_queries} queries")
    mask = torch.zeros(num_queries, num_candidates, dtype=torch.bool)
    for q, items in enumerate(gt):
        items = [items] if isinstance(items, int) else list(items)
        if not items:
            raise ValueError(f"{name}[{q}] is empty: every query needs at least one ground-truth item")
        for c in items:
            if not 0 <= int(c) < num_candidates:
                raise ValueError(f"{name}[{q}] names item {c}, outside the {num_candidates} candidates")
            mask[q, int(c)] = True
    return mask


def best_match_ranks(sim: torch.Tensor, gt: GroundTruth, name: str = "ground truth") -> torch.Tensor:
    """0-based rank of the best ground-truth item of every query (rows of ``sim``); ``C`` when not found.

    See the module docstring for ties: wrong candidates scoring equal to the best ground-truth item
    are counted as ranked above it.
    """
    if sim.dim() != 2:
        raise ValueError(f"expected a 2-D (queries, candidates) similarity matrix, got shape {tuple(sim.shape)}")
    sim = sim.detach().cpu().double()
    if torch.isnan(sim).any():
        raise ValueError("similarity matrix contains NaN")
    mask = _gt_mask(gt, sim.shape[0], sim.shape[1], name)
    best = sim.masked_fill(~mask, -math.inf).amax(dim=1, keepdim=True)
    ranks = ((sim >= best) & ~mask).sum(dim=1)
    return torch.where(best[:, 0] == -math.inf, torch.full_like(ranks, sim.shape[1]), ranks)


def _direction(ranks: torch.Tensor, num_candidates: int, prefix: str, ks: Sequence[int]) -> dict[str, float]:
    found = ranks < num_candidates
    out = {f"{prefix}_r{k}": 100.0 * float(((ranks < k) & found).double().mean()) for k in ks}
    out[f"{prefix}_r_mean"] = sum(out[f"{prefix}_r{k}"] for k in ks) / len(ks)
    one_based = (ranks + 1).double()
    out[f"{prefix}_medr"] = float(one_based.median())  # lower median, as torch defines it
    out[f"{prefix}_meanr"] = float(one_based.mean())
    return out


def retrieval_metrics(sim_t2v: torch.Tensor, txt2vid: GroundTruth, vid2txt: GroundTruth, *,
                      sim_v2t: torch.Tensor | None = None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k (percent) in both directions, their means, and median / mean rank (1-based).

    ``sim_t2v`` is ``(num_texts, num_videos)``; the video-to-text direction ranks its transpose, or
    ``sim_v2t`` ``(num_videos, num_texts)`` when given (re-ranking scores each direction separately).
    ``txt2vid[t]`` / ``vid2txt[v]`` are the ground-truth index (or list of indices) of each query.
    Keys: ``t2v_r1 t2v_r5 t2v_r10 t2v_r_mean t2v_medr t2v_meanr``, the same for ``v2t``, and ``mean_r``
    (the mean of the two ``r_mean``, the authors' summary number). Ties: see the module docstring.
    """
    if sim_v2t is None:
        sim_v2t = sim_t2v.t()
    if tuple(sim_v2t.shape) != tuple(sim_t2v.shape[::-1]):
        raise ValueError(f"sim_v2t has shape {tuple(sim_v2t.shape)}, expected {tuple(sim_t2v.shape[::-1])} "
                         "(the transpose of sim_t2v)")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    out = _direction(best_match_ranks(sim_t2v, txt2vid, "txt2vid"), sim_t2v.shape[1], "t2v", ks)
    out.update(_direction(best_match_ranks(sim_v2t, vid2txt, "vid2txt"), sim_v2t.shape[1], "v2t", ks))
    out["mean_r"] = (out["t2v_r_mean"] + out["v2t_r_mean"]) / 2
    return out


def rerank_with_vtm(sim: torch.Tensor, score_fn: Callable[[int, torch.Tensor], torch.Tensor], k: int) -> torch.Tensor:
    """Re-score the top ``k`` candidates of every query (row of ``sim``) with ``score_fn``.

    ``score_fn(query, candidates)`` gets the query index and a LongTensor of its ``k`` best candidate
    indices (by ``sim``; ties broken towards the lower index) and returns their ``k`` match scores
    (e.g. VTM logits). In the returned float64 matrix the top-k candidates carry those scores and all
    other candidates keep their original order, shifted to rank strictly below the lowest top-k score
    (the authors put them all at one constant instead, which leaves their order to the sort). ``k <= 0``
    returns a copy.
    """
    if sim.dim() != 2:
        raise ValueError(f"expected a 2-D (queries, candidates) similarity matrix, got shape {tuple(sim.shape)}")
    out = sim.detach().cpu().double().clone()
    num_candidates = sim.shape[1]
    k = min(int(k), num_candidates)
    if k <= 0:
        return out
    order = torch.sort(out, dim=1, descending=True, stable=True).indices[:, :k]
    for q in range(out.shape[0]):
        candidates = order[q]
        scores = torch.as_tensor(score_fn(q, candidates)).detach().cpu().double().reshape(-1)
        if scores.numel() != k:
            raise ValueError(f"score_fn returned {scores.numel()} scores for query {q}, expected {k}")
        if torch.isnan(scores).any():
            raise ValueError(f"score_fn returned NaN for query {q}")
        rest = torch.ones(num_candidates, dtype=torch.bool)
        rest[candidates] = False
        row = out[q]
        finite_rest = rest & torch.isfinite(row)
        finite_scores = scores[torch.isfinite(scores)]
        if finite_rest.any():
            floor = float(finite_scores.min()) if finite_scores.numel() else 0.0
            row[finite_rest] = row[finite_rest] - float(row[finite_rest].max()) + floor - 1.0
        row[candidates] = scores
    return out


# ---------------------------------------------------------------------------------------------
# evaluation loop
# ---------------------------------------------------------------------------------------------
def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def evaluate_retrieval(
    model: Any,
    retrieval_set: RetrievalSet,
    batch_size: int = 16,
    rerank_k: int = 0,
    output_file: str | os.PathLike | None = None,
    *,
    tokenizer: Any = None,
    max_text_len: int | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    return_similarity: bool = False,
) -> dict[str, Any]:
    """Zero-shot / fine-tuned retrieval metrics of ``model`` on ``retrieval_set``.

    ``model`` offers ``encode_video(videos) -> (tokens, embed)``, ``encode_text(input_ids,
    attention_mask) -> (tokens, embed)``, ``vtm_score(video_tokens, input_ids, attention_mask) -> (B,)``
    and ``tokenizer`` (or pass ``tokenizer``). Videos are encoded ``batch_size`` at a time (also the
    VTM batch), texts padded to ``max_text_len`` (default: the set's). With ``rerank_k > 0`` the top-k
    of every query is re-scored by VTM (the authors use k = 128).

    Returns (and writes to ``output_file`` as JSON, atomically) ``{"vtc": metrics, "vtm": metrics
    (only when re-ranking), "num_videos", "num_texts", "rerank_k", "json_file", "bad_videos"}``; with
    ``return_similarity`` also ``"sim_t2v"`` (the cosine matrix, not written). Unreadable videos are
    listed in ``bad_videos`` and their queries count as misses; more than the set's
    ``max_bad_fraction`` raises ``BadDataError``. Re-ranking keeps every video's token sequence on the
    CPU (``num_videos x N x D_v`` in the model's dtype: about 1.8 GB for MSRVTT-1k at 8 x 196 tokens of
    576 in bfloat16), as the authors' evaluation does.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("evaluate_retrieval needs a tokenizer: the model has no .tokenizer and none was passed")
    dtype = module_dtype(model)
    device = torch.device(device) if device is not None else module_device(model)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    start_time = time.time()
    num_videos, num_texts = len(retrieval_set), len(retrieval_set.texts)
    try:
        with torch.no_grad():
            # -- videos ------------------------------------------------------------------------
            loader = DataLoader(retrieval_set, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                collate_fn=collate_retrieval_videos)
            video_embed: torch.Tensor | None = None
            video_tokens: torch.Tensor | None = None
            bad: dict[int, str] = {}
            for batch in loader:
                valid, index = batch["valid"], batch["index"]
                for i, ok, reason in zip(index.tolist(), valid.tolist(), batch["reasons"]):
                    if not ok:
                        bad[i] = reason
                retrieval_set.check_bad_fraction(sorted(bad))
                if not valid.any():
                    continue
                tokens, embed = model.encode_video(batch["videos"][valid].to(device, dtype))
                embed = video_embedding(embed.detach().float()).cpu()  # per-frame: mean frame cosine
                if video_embed is None:
                    video_embed = torch.zeros(num_videos, embed.shape[-1])
                    if rerank_k > 0:
                        video_tokens = torch.zeros(num_videos, *tokens.shape[1:], dtype=tokens.dtype)
                video_embed[index[valid]] = embed
                if video_tokens is not None:
                    video_tokens[index[valid]] = tokens.detach().cpu()
            if video_embed is None:
                raise RuntimeError(f"{retrieval_set.json_file}: none of the {num_videos} videos could be read")
            bad_index = torch.tensor(sorted(bad), dtype=torch.long)

            # -- texts -------------------------------------------------------------------------
            input_ids, attention_mask = retrieval_set.tokenize(tokenizer, max_text_len)
            text_embed = []
            for a, b in _chunks(num_texts, max(batch_size, 64)):
                _, embed = model.encode_text(input_ids[a:b].to(device), attention_mask[a:b].to(device))
                text_embed.append(F.normalize(embed.detach().float(), dim=-1).cpu())
            sim_t2v = torch.cat(text_embed) @ video_embed.t()
            sim_t2v[:, bad_index] = -math.inf
            results: dict[str, Any] = {
                "vtc": retrieval_metrics(sim_t2v, retrieval_set.txt2vid, retrieval_set.vid2txt)
            }

            # -- VTM re-ranking ----------------------------------------------------------------
            if rerank_k > 0:
                assert video_tokens is not None

                def t2v_score(t: int, videos: torch.Tensor) -> torch.Tensor:
                    scores = []
                    for a, b in _chunks(len(videos), batch_size):
                        n = b - a
                        scores.append(model.vtm_score(video_tokens[videos[a:b]].to(device),
                                                      input_ids[t].expand(n, -1).to(device),
                                                      attention_mask[t].expand(n, -1).to(device)).float().cpu())
                    return torch.cat(scores)

                def v2t_score(v: int, texts: torch.Tensor) -> torch.Tensor:
                    scores = []
                    for a, b in _chunks(len(texts), batch_size):
                        n = b - a
                        tokens = video_tokens[v].unsqueeze(0).expand(n, *video_tokens.shape[1:])
                        scores.append(model.vtm_score(tokens.to(device), input_ids[texts[a:b]].to(device),
                                                      attention_mask[texts[a:b]].to(device)).float().cpu())
                    return torch.cat(scores)

                t2v = rerank_with_vtm(sim_t2v, t2v_score, rerank_k)
                v2t = rerank_with_vtm(sim_t2v.t(), v2t_score, rerank_k)
                t2v[:, bad_index] = -math.inf
                v2t[bad_index, :] = -math.inf
                results["vtm"] = retrieval_metrics(t2v, retrieval_set.txt2vid, retrieval_set.vid2txt, sim_v2t=v2t)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()

    results.update({
        "num_videos": num_videos,
        "num_texts": num_texts,
        "rerank_k": int(rerank_k),
        "json_file": retrieval_set.json_file,
        "bad_videos": [{"index": i, "path": retrieval_set.videos[i], "reason": r} for i, r in sorted(bad.items())],
    })
    best = results.get("vtm", results["vtc"])
    logger.info("retrieval on %s (%d videos, %d texts, %s): t2v R@1/5/10 %.1f/%.1f/%.1f, v2t R@1/5/10 "
                "%.1f/%.1f/%.1f in %.1fs", retrieval_set.json_file, num_videos, num_texts,
                f"VTM top-{rerank_k}" if rerank_k > 0 else "VTC", best["t2v_r1"], best["t2v_r5"], best["t2v_r10"],
                best["v2t_r1"], best["v2t_r5"], best["v2t_r10"], time.time() - start_time)
    if bad:
        logger.warning("%d unreadable evaluation video(s) counted as misses", len(bad))
    if output_file is not None:
        write_json(output_file, results)
    if return_similarity:
        results["sim_t2v"] = sim_t2v
    return results
