"""``videomap vl-train``, ``retrieval-eval`` and ``search``: the video-text model (:mod:`videomap.vl`)
on the engine.

A job file's ``vl`` section names the model (the :class:`~videomap.vl.VideoTextConfig` fields), the
caption corpora it trains on and the retrieval set it is evaluated on; ``train`` is the engine's
usual section. Every training run ends with ``output_dir/final``, a
:meth:`~videomap.vl.VideoTextModel.save_pretrained` directory that the next phase (``vl.init_from``:
the paper's final unmasked epoch starts from the masked run), ``retrieval-eval`` and ``search`` load.

Image and video corpora cannot share a batch (an image is a 1-frame clip). When a job mixes them,
every step takes one whole batch from one kind, the kinds drawn in proportion to their batch counts
(UMT's ``MetaLoader``); see :class:`videomap.vl.data.CaptionBatches`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import JobConfig, VlSection, dump_config
from ..engine import Trainer, autocast, is_main_process, resolve_amp
from ..engine.distributed import broadcast_object, resolve_device
from ..io import read_saved_json, write_json
from ..seeding import seed_everything
from .common import output_path, restore_config

log = logging.getLogger(__name__)

# the summary numbers of a retrieval evaluation (logged during training, printed by retrieval-eval)
SUMMARY_KEYS = ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "mean_r")


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def _saved_config(directory: str, what: str) -> dict[str, Any]:
    """The ``VideoTextConfig`` fields a saved model was built with; errors name ``what``."""
    from ..vl.model import CONFIG_FILE

    try:
        return read_saved_json(directory, CONFIG_FILE, "VideoTextModel.save_pretrained, the final/ directory of "
                               "`videomap vl-train`")["config"]
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None


def load_video_text_model(cfg: JobConfig, directory: str | os.PathLike, what: str = "vl.init_from",
                          teacher: bool = True):
    """A saved video-text model with the job's choices applied.

    The saved directory decides the model (:func:`~videomap.tasks.common.restore_config`): of the
    model keys the job gives (often through a shared base file), the weight sources
    (``text_encoder``, ``tokenizer``, ``video_checkpoint``) are not used, as the directory holds its
    own; the model's runtime fields (clip size, text length, loss weights, masks, teacher, training
    signal, pooling and test geometry) override the saved values; every other field is architecture
    (``video_encoder``, ``video_overrides``, ``embed_dim``, ``fusion_layers``, and any field not
    declared runtime) and must agree with the saved model (a conflict is a ``ValueError`` naming
    both values). ``teacher=False`` attaches no teacher (evaluation, search).
    """
    from ..vl import VideoTextConfig, VideoTextModel

    directory = os.fspath(directory)
    saved = _saved_config(directory, what)
    section = cfg.vl
    requested = {k: v for k, v in section.to_dict().items() if cfg.is_given(f"vl.{k}")}
    overrides = restore_config(saved, requested, runtime=VideoTextConfig.RUNTIME_FIELDS,
                               sources=VideoTextConfig.SOURCE_FIELDS, checkpoint=directory, prefix="vl.",
                               keys=f"{what}: the job's vl keys",
                               advice=f"drop those keys (the saved model is used) or point {what} at the model you "
                                      "meant")
    try:
        return VideoTextModel.from_pretrained(directory, teacher=teacher, **overrides)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from e


def build_video_text_model(cfg: JobConfig):
    """The job's model: restored from ``vl.init_from`` or built from the ``vl`` section."""
    from ..vl import VideoTextModel

    section = cfg.vl
    if section.init_from:
        return load_video_text_model(cfg, section.init_from)
    if not section.text_encoder:
        raise ValueError("vl.text_encoder is not set: give a BERT-class masked language model (a local directory "
                         "or a hub id such as bert-base-uncased), or vl.init_from (a saved video-text model)")
    try:
        config = section.model_config()
    except ValueError as e:
        raise ValueError(f"vl: {e}") from e
    return VideoTextModel.from_config(config)


# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingData:
    """What :class:`~videomap.engine.Trainer` needs: the dataset, its collate function and the
    per-process batch size the engine should use (1 when every item is a whole batch)."""

    dataset: Dataset
    collate_fn: Any
    engine_batch_size: int
    mixed: bool


def _check_train_files(section: VlSection) -> None:
    if not section.train_data:
        raise ValueError("vl.train_data is empty; give the caption files to train on, e.g. "
                         "[{file: webvid_train.json, media_root: webvid}]")
    for i, corpus in enumerate(section.train_data):
        if not os.path.isfile(corpus.file):
            raise FileNotFoundError(f"vl.train_data[{i}].file: {corpus.file} does not exist")


def build_training_data(cfg: JobConfig, model) -> TrainingData:
    """The caption corpora of ``vl.train_data``, decoded at the model's clip size and tokenized
    with its tokenizer."""
    from ..vl.data import CaptionBatches, CaptionMix, VideoCaptionDataset, collate_captions, first_item

    section = cfg.vl
    _check_train_files(section)
    c = model.config
    datasets = [
        VideoCaptionDataset(corpus.file, model.tokenizer, media_root=corpus.media_root, num_frames=c.num_frames,
                            img_size=c.img_size, mode="train", max_text_len=c.max_text_len, seed=cfg.train.seed,
                            max_bad_fraction=section.max_bad_fraction, media_type=corpus.media_type,
                            crop_scale=tuple(section.crop_scale), flip=section.flip)
        for corpus in section.train_data
    ]
    mix = CaptionMix(datasets)
    kinds = {mix.kind(i) for i in range(len(mix))}
    for ds in datasets:
        log.info("%s: %d samples of %d distinct media files", ds.json_file, len(ds), ds.num_videos)
    if len(kinds) < 2:
        return TrainingData(mix, collate_captions, cfg.train.batch_size, mixed=False)
    batches = CaptionBatches(mix, cfg.train.batch_size, seed=cfg.train.seed)
    log.info("images and videos: each step is one batch of %d pairs of one kind (%d video and %d image batches "
             "per epoch); the engine counts batches, so its clips/s are batches/s",
             cfg.train.batch_size, batches.counts["video"], batches.counts["image"])
    return TrainingData(batches, first_item, 1, mixed=True)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def make_loss_fn(masked: bool = True):
    """``loss_fn(model, batch)`` for the engine: the weighted loss, each loss and the temperature
    for logging. ``idx`` tells the losses which pairs show the same video."""

    def loss_fn(model, batch: Mapping[str, Any]):
        out = model(batch["videos"], batch["input_ids"], batch["attention_mask"], masked=masked,
                    idx=batch["video_ids"])
        temp = getattr(model, "module", model).temp.detach()
        if hasattr(temp, "full_tensor"):  # a sharded (FSDP) parameter
            temp = temp.full_tensor()
        metrics = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
        metrics["temp"] = float(temp)
        return out["loss"], metrics

    return loss_fn


def _check_eval_json(section: VlSection) -> str:
    """``vl.eval_json``, which must name an existing file (checked before any model is loaded)."""
    if not section.eval_json:
        raise ValueError("vl.eval_json is not set; give the retrieval test set (a caption JSON such as "
                         "msrvtt_test1k.json) and vl.eval_media_root")
    if not os.path.isfile(section.eval_json):
        raise FileNotFoundError(f"vl.eval_json: {section.eval_json} does not exist")
    return section.eval_json


def build_retrieval_set(cfg: JobConfig, model):
    """``vl.eval_json`` as a :class:`~videomap.vl.RetrievalSet` at the model's clip size and text length."""
    from ..vl import RetrievalSet

    section = cfg.vl
    _check_eval_json(section)
    c = model.config
    return RetrievalSet(section.eval_json, media_root=section.eval_media_root, num_frames=c.num_frames,
                        img_size=c.img_size, max_text_len=c.max_text_len, paragraph=section.paragraph,
                        max_bad_fraction=section.max_bad_fraction, test_geometry=c.eval_geometry)


def summary(results: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of an :func:`~videomap.vl.evaluate_retrieval` result (VTM re-ranked
    when it was run, else the similarity ranking)."""
    best = results.get("vtm", results["vtc"])
    return {k: float(best[k]) for k in SUMMARY_KEYS}


def make_evaluate_fn(cfg: JobConfig, retrieval_set):
    """Retrieval during training: computed by the first process, shared with the others."""
    section = cfg.vl

    def evaluate_fn(model) -> dict[str, float]:
        from ..vl import evaluate_retrieval

        results = None
        if is_main_process():
            results = summary(evaluate_retrieval(model, retrieval_set, batch_size=section.eval_batch_size,
                                                 rerank_k=section.rerank_k, num_workers=cfg.train.num_workers))
        return broadcast_object(results)

    return evaluate_fn


def run_vl_train(cfg: JobConfig) -> dict[str, Any]:
    """Train (``vl.masked``: with masked video input, else the unmasked phase) and save ``output_dir/final``."""
    section = cfg.vl
    if section.eval_json and cfg.train.distributed == "fsdp":
        raise ValueError("vl.eval_json: retrieval during training runs on the first process only, which FSDP "
                         "cannot do; evaluate afterwards with `videomap retrieval-eval`")
    _check_train_files(section)  # before the model is built: a typo fails in a second
    if section.eval_json:
        _check_eval_json(section)
    seed_everything(cfg.train.seed)  # the new heads start the same way every run
    model = build_video_text_model(cfg)
    c = model.config
    if c.vtm > 0 and cfg.train.batch_size < 2:
        raise ValueError(f"train.batch_size is {cfg.train.batch_size}: video-text matching (vl.vtm > 0) draws "
                         "its negatives from the other pairs of a batch, so it needs at least 2")
    data = build_training_data(cfg, model)
    evaluate_fn = make_evaluate_fn(cfg, build_retrieval_set(cfg, model)) if section.eval_json else None
    losses = ", ".join(f"{k} {getattr(c, k):g}" for k in ("vtc", "vtm", "mlm", "uta") if getattr(c, k) > 0)
    log.info("%s phase from %s: losses %s; %s", "masked" if section.masked else "unmasked",
             section.init_from or f"{c.video_encoder} + {c.text_encoder}", losses,
             f"video mask {c.video_mask_type} {c.video_mask_ratio:g}, image mask {c.image_mask_type} "
             f"{c.image_mask_ratio:g}" if section.masked else "every token enters the encoder")
    train_cfg = cfg.resolved_train()
    if data.engine_batch_size != train_cfg.batch_size:
        train_cfg = dataclasses.replace(train_cfg, batch_size=data.engine_batch_size)
    trainer = Trainer(model, make_loss_fn(section.masked), data.dataset, train_cfg, collate_fn=data.collate_fn,
                      evaluate_fn=evaluate_fn)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
    result = trainer.fit(resume=cfg.train.resume)
    final = None
    if is_main_process():
        if data.dataset.bad_samples():
            log.warning("%s", data.dataset.bad_sample_summary())
        final = model.save_pretrained(output_path(cfg, "final"))
    return {**result, "final": final}


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def run_retrieval_eval(cfg: JobConfig, checkpoint: str | None = None) -> dict[str, Any]:
    """Zero-shot (or fine-tuned) retrieval of ``checkpoint`` (default ``vl.init_from``) on
    ``vl.eval_json``, with VTM re-ranking of the top ``vl.rerank_k``.

    Writes ``retrieval_<test file name>.json`` (every metric, both rankings, the unreadable
    videos) into ``train.output_dir``. The model is run at ``vl.num_frames`` / ``vl.max_text_len``
    when the job gives them (the evaluation configs do), else at its saved values.
    """
    from ..vl import evaluate_retrieval

    section = cfg.vl
    directory = checkpoint or section.init_from
    if not directory:
        raise ValueError("retrieval-eval needs a trained model: pass --checkpoint (the final/ directory of "
                         "`videomap vl-train`) or set vl.init_from")
    _check_eval_json(section)
    model = load_video_text_model(cfg, directory, what="--checkpoint" if checkpoint else "vl.init_from",
                                  teacher=False)
    device = resolve_device(cfg.train.device)
    model.to(device).eval()
    retrieval_set = build_retrieval_set(cfg, model)
    amp_dtype, _ = resolve_amp(cfg.train.amp, device)
    with autocast(amp_dtype, device):
        results = evaluate_retrieval(model, retrieval_set, batch_size=section.eval_batch_size,
                                     rerank_k=section.rerank_k, num_workers=cfg.train.num_workers)
    results = {"checkpoint": os.path.abspath(directory), "num_frames": model.config.num_frames,
               "max_text_len": model.config.max_text_len, "paragraph": section.paragraph, **results,
               "summary": summary(results)}
    if is_main_process():
        name = os.path.splitext(os.path.basename(section.eval_json))[0]
        results["output"] = output_path(cfg, f"retrieval_{name}.json")
        write_json(results["output"], results)
    return results


# ---------------------------------------------------------------------------------------------
# search over a folder of videos
# ---------------------------------------------------------------------------------------------
def run_search(index_dir: str, query: str | None = None, videos: str | Sequence[str] | None = None,
               checkpoint: str | None = None, k: int = 5, batch_size: int = 8, rebuild: bool = False,
               device: str = "auto") -> dict[str, Any]:
    """Text search over a folder of videos with a trained video-text model.

    ``videos`` (a folder, a file, or a list of them) are embedded into the index in ``index_dir``
    first; only files that are new or changed since the last run are encoded. The index remembers
    the model directory it was built with (``model.json``), so ``checkpoint`` can be left out
    afterwards; a different model is refused (``rebuild=True`` starts the index over for it).
    ``query`` is embedded with the same model and the ``k`` most similar videos (cosine) are
    returned, best first.
    """
    from ..vl import VideoIndex, VideoTextModel
    from ..vl.index import (
        ModelMismatchError,
        VideoIndexError,
        model_identity,
        read_index_model,
        video_encoder_fn,
        write_index_model,
    )

    if k < 1:
        raise ValueError(f"-k: expected a number of results >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {batch_size}")
    if query is not None and not query.strip():
        raise ValueError("--query: expected the text to search for, got an empty string")
    if query is None and not videos:
        raise ValueError("nothing to do: give --query to search, --videos to add a folder to the index, or both")
    paths = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos or [])
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"--videos: {p} does not exist")
    index_dir = os.path.abspath(os.fspath(index_dir))
    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise ValueError(f"--index: {index_dir} is a file; expected a directory for the index")
    has_index = os.path.isfile(os.path.join(index_dir, "index.json"))
    if not has_index and not paths:
        raise ValueError(f"--index: no video index in {index_dir} yet; build it first with --videos FOLDER "
                         "--checkpoint MODEL_DIR")
    try:
        recorded = read_index_model(index_dir) if has_index and not rebuild else None
    except VideoIndexError as e:
        raise ValueError(f"--index: {e}; pass --checkpoint to name the model") from None
    if checkpoint is None:
        if recorded is None:
            raise ValueError(f"--checkpoint: give the model directory (the final/ directory of `videomap vl-train`)"
                             f"{'; the index in ' + index_dir + ' does not record one' if has_index else ''}")
        checkpoint = recorded["checkpoint"]
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"--index: {index_dir} was built with the model {checkpoint}, which no longer "
                                    "exists; pass --checkpoint (the same model moved elsewhere, or use another "
                                    "--index for another model)")
    elif not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"--checkpoint: {checkpoint} is not a directory (expected the final/ directory of "
                                "`videomap vl-train`)")
    checkpoint = os.path.abspath(checkpoint)
    _saved_config(checkpoint, "--checkpoint")  # a clear error for a directory that is not a saved model
    model = VideoTextModel.from_pretrained(checkpoint, teacher=False)
    dev = resolve_device(device)
    model.to(dev).eval()
    c = model.config
    model_id = model_identity(checkpoint, num_frames=c.num_frames, img_size=c.img_size)
    try:
        index = VideoIndex(index_dir, model_id=model_id, rebuild=rebuild)
    except ModelMismatchError as e:
        raise ValueError(f"--checkpoint / --index: {e} (or pass --rebuild to re-embed every video with this "
                         "model)") from None
    except VideoIndexError as e:
        raise ValueError(f"--index: {e}") from None
    out: dict[str, Any] = {"index": index_dir, "checkpoint": checkpoint, "model_id": model_id}
    if paths:
        report = index.add_videos(paths, video_encoder_fn(model, c.num_frames, c.img_size, device=dev),
                                  batch_size=batch_size)
        removed = index.remove_missing()
        if is_main_process():
            write_index_model(index_dir, checkpoint=checkpoint, model_id=model_id, num_frames=c.num_frames,
                              img_size=c.img_size)
        out.update(added=len(report.added), updated=len(report.updated), unchanged=len(report.unchanged),
                   failed=[{"path": p, "reason": r} for p, r in report.failed], removed=len(removed))
    out["size"] = len(index)
    if query is not None:
        with torch.no_grad():
            ids = model.tokenize(query)
            _, embed = model.encode_text(ids["input_ids"], ids["attention_mask"])
        try:
            hits = index.search(embed[0].float().cpu(), k)
        except VideoIndexError as e:
            raise ValueError(f"--index: {e}") from None
        out["query"] = query
        out["results"] = [{"path": p, "score": s} for p, s in hits]
    return out


def format_search(result: Mapping[str, Any]) -> str:
    """What ``videomap search`` prints."""
    lines = []
    if "added" in result:
        lines.append(f"index {result['index']}: {result['added']} new, {result['updated']} re-embedded, "
                     f"{result['unchanged']} unchanged, {len(result['failed'])} unreadable, {result['removed']} "
                     f"removed ({result['size']} videos)")
        lines += [f"  unreadable: {f['path']}: {f['reason']}" for f in result["failed"]]
    if "results" in result:
        lines.append(f"top {len(result['results'])} of {result['size']} for {result['query']!r}:")
        width = int(math.log10(max(1, len(result["results"])))) + 1
        lines += [f"{i:>{width}}. {r['score']:.4f}  {r['path']}" for i, r in enumerate(result["results"], 1)]
    return "\n".join(lines)
