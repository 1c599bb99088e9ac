"""``videomap llm-train``, ``llm-eval`` and ``chat``: the Video-LLM (:mod:`videomap.llm`) on the engine.

A job file's ``llm`` section names the model (the :class:`~videomap.llm.VideoLLMConfig` fields)
and the stage; ``train`` is the engine's usual section. Stage 1 (``align``) trains the projector,
stage 2 (``instruct``) the projector and the LM (full, or LoRA adapters), starting from stage 1's
``final/`` directory (``llm.init_from``). Every run ends with ``output_dir/final``, a
:meth:`~videomap.llm.VideoLLM.save_pretrained` directory that the next stage, ``llm-eval`` and
``chat`` load.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

from ..config import JobConfig, LlmSection, dump_config
from ..engine import Trainer, autocast, is_main_process, resolve_amp
from ..engine.distributed import resolve_device
from ..io import read_saved_json, write_json
from ..llm.model import DEFAULT_MAX_NEW_TOKENS
from .common import output_path, restore_config

log = logging.getLogger(__name__)

def _saved_model(directory: str) -> dict[str, Any]:
    """``videomap_llm.json`` of a saved Video-LLM: ``{"config": {...}, "llm_weights": ...}``."""
    from ..llm.model import CONFIG_FILE

    return read_saved_json(directory, CONFIG_FILE,
                           "`videomap llm-train` (its final/ directory, VideoLLM.save_pretrained)")


def load_video_llm(cfg: JobConfig, directory: str, what: str = "llm.init_from"):
    """A saved Video-LLM, with the job's loading choices applied.

    The saved directory decides the model (:func:`~videomap.tasks.common.restore_config`): of the
    model keys the job gives (often through a shared base file), the model's runtime fields
    override the saved values; the LM location (``language_model`` / ``tokenizer``) does too while
    the LM is still the untrained source (it may have moved), but not once the directory holds
    trained LM weights; the encoder checkpoints are the directory's own. Any other field must agree
    with the saved model: a conflict is a ``ValueError`` naming both values, so a stage never
    silently runs another model than the job describes.
    """
    from ..llm import VideoLLM, VideoLLMConfig

    directory = os.fspath(directory)
    saved = _saved_model(directory)
    config = VideoLLMConfig.from_dict(saved["config"]).to_dict()
    lm_trained = saved.get("llm_weights") == "full"
    section = cfg.llm
    lm_keys = set() if lm_trained else {"language_model", "tokenizer"}
    # an LM location given as null names no new place: the saved one stays
    requested = {k: v for k, v in section.to_dict().items()
                 if cfg.is_given(f"llm.{k}") and not (k in lm_keys and v is None)}
    overrides = restore_config(config, requested, runtime=VideoLLMConfig.RUNTIME_FIELDS | lm_keys,
                               sources=VideoLLMConfig.SOURCE_FIELDS, checkpoint=directory, prefix="llm.",
                               keys=f"{what}: the job's llm keys",
                               advice=f"drop those keys (the saved model is used) or point {what} at the model you "
                                      "meant")
    return VideoLLM.from_pretrained(directory, **overrides)


def build_video_llm(cfg: JobConfig):
    """The job's Video-LLM: restored from ``llm.init_from`` or built from the ``llm`` section."""
    from ..llm import VideoLLM

    section = cfg.llm
    if section.init_from:
        return load_video_llm(cfg, section.init_from)
    if not section.language_model:
        raise ValueError("llm.language_model is not set: give the causal LM (a local directory or a hub id), or "
                         "llm.init_from (a previous stage's final/ directory)")
    return VideoLLM.from_config(section.model_config())


def _check_train_json(json_file: str | None) -> str:
    if not json_file:
        raise ValueError("llm.train_json is not set; give the LLaVA-style conversation file (a JSON list of "
                         '{"video" | "image": path, "conversations": [...]})')
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"llm.train_json: {json_file} does not exist")
    return json_file


def build_instruction_dataset(cfg: JobConfig, model, json_file: str | None, mode: str = "train"):
    """``json_file`` as tokenized samples for ``model`` (its tokenizer and clip size)."""
    from ..llm.data import VideoInstructionDataset

    _check_train_json(json_file)
    section = cfg.llm
    return VideoInstructionDataset(
        json_file, model.tokenizer, media_root=section.media_root, num_frames=model.config.num_frames,
        img_size=model.config.img_size, mode=mode, max_length=section.max_length,
        max_bad_fraction=section.max_bad_fraction, seed=cfg.train.seed, system=section.system,
    )


def _set_stage(model, section: LlmSection) -> None:
    """What the job's stage trains (``llm.stage``, ``llm.lora``, ``llm.train_encoder``)."""
    model.set_trainable(section.stage, lora=section.lora.peft_kwargs() if section.lora else None,
                        train_encoder=section.train_encoder)


def _llm_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (the model's own ``loss``)."""
    return model(**batch).loss


def run_llm_train(cfg: JobConfig) -> dict[str, Any]:
    """Train one stage (``llm.stage``) and save ``output_dir/final``."""
    from ..llm.conversation import resolve_pad_token_id
    from ..llm.data import collate_instructions

    section = cfg.llm
    _check_train_json(section.train_json)  # before loading a 7B model, not after
    if section.stage == "instruct" and not section.init_from:
        log.warning("stage instruct without llm.init_from: the projector starts untrained (LLaVA starts stage 2 "
                    "from stage 1's projector)")
    model = build_video_llm(cfg)
    _set_stage(model, section)
    if section.llm_gradient_checkpointing:
        model.gradient_checkpointing_enable()
    dataset = build_instruction_dataset(cfg, model, section.train_json)
    collate = functools.partial(collate_instructions, pad_token_id=resolve_pad_token_id(model.tokenizer))
    trainer = Trainer(model, _llm_loss, dataset, cfg.resolved_train(), collate_fn=collate)
    if trainer.is_main:
        dump_config(cfg, output_path(cfg, "config.yaml"))
        what = "projector" if section.stage == "align" else "projector + " + ("LoRA" if section.lora else "LM")
        log.info("stage %s (%s) from %s on %d samples of %s", section.stage, what,
                 section.init_from or section.language_model, len(dataset), section.train_json)
    result = trainer.fit(resume=cfg.train.resume)
    final = None
    if trainer.mode == "fsdp":
        model = _gathered_copy(cfg, trainer)  # collective; the model only on rank 0, else None
    if is_main_process():
        if dataset.bad_samples():
            log.warning("%s", dataset.bad_sample_summary())
        final = model.save_pretrained(output_path(cfg, "final"))
    return {**result, "final": final}


def _gathered_copy(cfg: JobConfig, trainer: Trainer):
    """Under FSDP the trained tensors are sharded over the ranks; ``save_pretrained`` needs whole
    ones. Gather the trainable tensors (collective) and load them into a plain copy of the model
    built on rank 0 from the same sources."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
    if not is_main_process():
        return None
    section = cfg.llm
    plain = build_video_llm(cfg)
    _set_stage(plain, section)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise RuntimeError("gathered FSDP state does not match the model: missing "
                           f"{sorted(trainable & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}")
    return plain


def read_eval_items(section: LlmSection) -> list:
    """The questions of ``llm.eval_json`` in ``llm.eval_format`` (first ``max_eval_samples``)."""
    from ..llm import qa

    if not section.eval_json:
        raise ValueError("llm.eval_json is not set; give the question file (llm.eval_format says its format)")
    for key in ("eval_json", "eval_answers_json"):
        path = getattr(section, key)
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"llm.{key}: {path} does not exist")
    items = qa.read_qa(section.eval_format, section.eval_json, section.eval_answers_json)
    return items[: section.max_eval_samples] if section.max_eval_samples is not None else items


def evaluate_video_llm(model, items: list, section: LlmSection, output_file: str | None) -> dict[str, Any]:
    """Score ``model`` on ``items``: exact match after normalisation for open-ended questions (the
    papers' GPT-judged score cannot run offline), log-likelihood choice for multiple choice."""
    from ..llm import qa

    common = dict(media_root=section.media_root, num_frames=model.config.num_frames,
                  img_size=model.config.img_size, system=section.system, output_file=output_file)
    with_candidates = sum(item.candidates is not None for item in items)
    if section.eval_format == "multiple_choice" or (with_candidates and with_candidates == len(items)):
        return qa.evaluate_multiple_choice(model, items, length_normalize=section.eval_length_normalize,
                                           **common)
    if with_candidates:
        raise ValueError(f"{section.eval_json}: {with_candidates} of {len(items)} questions are multiple choice; "
                         "evaluate open-ended and multiple-choice questions from separate files")
    return qa.evaluate_open_ended(model, items, batch_size=section.eval_batch_size,
                                  max_new_tokens=section.max_new_tokens, answer_prompt=section.eval_answer_prompt,
                                  **common)


def run_llm_eval(cfg: JobConfig, checkpoint: str | None = None) -> dict[str, Any]:
    """Answer ``llm.eval_json`` with ``checkpoint`` (default ``llm.init_from``) and score it.

    Writes ``eval_<format>.json`` (the scores) and ``predictions_<format>.jsonl`` (one record per
    question) into ``train.output_dir``; the predictions file is resumable, so rerunning an
    interrupted evaluation only answers the questions still missing.
    """
    section = cfg.llm
    directory = checkpoint or section.init_from
    if not directory:
        raise ValueError("llm-eval needs a trained model: pass --checkpoint (a final/ directory of llm-train) or "
                         "set llm.init_from")
    items = read_eval_items(section)
    model = load_video_llm(cfg, directory, what="--checkpoint" if checkpoint else "llm.init_from")
    device = resolve_device(cfg.train.device)
    model.to(device).eval()
    amp_dtype, _ = resolve_amp(cfg.train.amp, device)
    fmt = section.eval_format
    predictions = output_path(cfg, f"predictions_{fmt}.jsonl") if is_main_process() else None
    with autocast(amp_dtype, device):
        scores = evaluate_video_llm(model, items, section, predictions)
    result = {"checkpoint": os.path.abspath(directory), "eval_json": section.eval_json, "format": fmt, **scores,
              "predictions": predictions}
    if is_main_process():
        write_json(output_path(cfg, f"eval_{fmt}.json"), result)
    return result


def run_chat(checkpoint: str, question: str, video: str | None = None, image: str | None = None,
             max_new_tokens: int | None = None, llm_dtype: str | None = None, device: str = "auto") -> str:
    """One answer of a saved Video-LLM about a video, an image or neither (``max_new_tokens``:
    None = the model's own generation limit)."""
    from ..data.media import load_image, load_video
    from ..llm import VideoLLM
    from ..llm.conversation import build_prompt

    if video and image:
        raise ValueError("--video and --image: give one of them (a prompt holds one placeholder here)")
    for arg, path in (("--video", video), ("--image", image)):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{arg}: {path} does not exist")
    if not question.strip():
        raise ValueError("question: expected the text to ask, got an empty string")
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected >= 1, got {max_new_tokens}")
    _saved_model(checkpoint)  # a clear error for a directory that is not a saved Video-LLM
    overrides = {"llm_dtype": llm_dtype} if llm_dtype else {}
    model = VideoLLM.from_pretrained(checkpoint, **overrides)
    dev = resolve_device(device)
    model.to(dev).eval()
    c = model.config
    kwargs: dict[str, Any] = {}
    if video:
        kwargs["videos"] = load_video(video, c.num_frames, c.img_size, "test")[None]
    elif image:
        kwargs["images"] = load_image(image, c.img_size, "test")[None]
    ids = build_prompt(model.tokenizer, question, "video" if video else "image" if image else None)[None]
    new = model.generate(ids.to(dev), torch.ones_like(ids).to(dev), max_new_tokens=max_new_tokens, **kwargs)
    return model.tokenizer.decode(new[0], skip_special_tokens=True).strip()
