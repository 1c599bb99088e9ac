"""Command line: ``videomap pretrain | finetune | evaluate | extract | export | llm-train | llm-eval | chat |
vl-train | retrieval-eval | search | demo | models``.

Every training command takes ``--config file.yaml`` and ``key=value`` overrides
(``train.epochs=5 model.name=videomap_small``); unknown keys are errors listing the valid ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .threads import configure_threads, set_wait_policy

if TYPE_CHECKING:
    from .config import JobConfig

LLM_COMMANDS = ("llm-train", "llm-eval", "chat")
VL_COMMANDS = ("vl-train", "retrieval-eval", "search")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="videomap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_text in [("pretrain", "masked pre-training (VideoMAP / token-wise AR / UMT)"),
                            ("finetune", "supervised fine-tuning with evaluation"),
                            ("evaluate", "multi-view evaluation of a checkpoint"),
                            ("extract", "per-video features with sliding windows"),
                            ("export", "a checkpoint as a torch.export (.pt2) or ONNX file or a transformers "
                             "directory (hf), checked against PyTorch"),
                            ("llm-train", "train a Video-LLM stage (llm.stage: align | instruct), see docs/llm.md"),
                            ("llm-eval", "video QA accuracy of a trained Video-LLM (open-ended or multiple choice)"),
                            ("vl-train", "video-text pre-training (VTC, VTM, MLM, UTA), see docs/retrieval.md"),
                            ("retrieval-eval", "text-to-video and video-to-text retrieval of a trained video-text "
                             "model")]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML job file (see configs/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")
        if name == "export":
            p.add_argument("--format", choices=("pt2", "onnx", "hf"), default="pt2")
            p.add_argument("--out", help="output file, or directory for hf (default: model.<format> or hf/ beside "
                           "the checkpoint)")
            p.add_argument("--labels", help="hf: text file with the class names, one per line (default LABEL_i)")
            p.add_argument("--onnx-scan", choices=("chunked", "loop", "kernel"), default=None,
                           help="onnx: the selective scan as unrolled chunked tensor ops (default), as an ONNX "
                           "Scan loop (smaller, slower), or as videomap's onnxruntime custom operator (eager "
                           "speed; needs videomap.ops.onnx_runtime's library at run time); docs/performance.md")
        if name in ("evaluate", "extract", "export"):
            p.add_argument("--checkpoint", help="weights file, or a save_pretrained directory (its config.json "
                           "gives the model unless the job names one)")
        if name == "llm-eval":
            p.add_argument("--checkpoint", help="the final/ directory of `videomap llm-train` (default: llm.init_from)")
        if name == "retrieval-eval":
            p.add_argument("--checkpoint", help="the final/ directory of `videomap vl-train` (default: vl.init_from)")
        if name in ("pretrain", "finetune", "llm-train", "vl-train"):
            p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    c = sub.add_parser("chat", help="ask a trained Video-LLM about a video or an image")
    c.add_argument("--checkpoint", required=True, help="the final/ directory of `videomap llm-train`")
    media = c.add_mutually_exclusive_group()
    media.add_argument("--video", help="video file (or frame folder) the question is about")
    media.add_argument("--image", help="image file the question is about")
    c.add_argument("--max-new-tokens", type=int,
                   help="answer length limit in tokens (default: the Video-LLM's own limit)")
    c.add_argument("--llm-dtype", choices=("float32", "bfloat16", "float16"),
                   help="load the LM in this precision (default: as saved)")
    c.add_argument("question", help='e.g. "What happens in this video?"')
    s = sub.add_parser("search", help="text search over a folder of videos with a trained video-text model")
    s.add_argument("--index", required=True, help="index directory (created on first use; it remembers the model "
                   "it was built with)")
    s.add_argument("--videos", help="folder (or file) of videos to add first; only new or changed files are embedded")
    s.add_argument("--checkpoint", help="the final/ directory of `videomap vl-train` (default: the index's model)")
    s.add_argument("--query", help='e.g. "a person cuts a tomato"')
    s.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--batch-size", type=int, default=8, help="videos embedded at a time")
    s.add_argument("--rebuild", action="store_true", help="start the index over (e.g. for another model)")
    d = sub.add_parser("demo", help="the end-to-end VideoMAP story on generated videos")
    d.add_argument("--out", help="run directory (default runs/demo, or runs/demo-quick with --quick); "
                   "a rerun continues the runs found there")
    d.add_argument("--quick", action="store_true", help="a tiny version that finishes in well under 2 minutes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--llm", action="store_true", help="the toy Video-LLM instead: questions about generated clips, "
                   "answered by a tiny LM on the demo's frozen VideoMAP encoder (default out: runs/llm-demo)")
    d.add_argument("--vl", action="store_true", help="the toy video-text model instead: generated clips with captions, "
                   "zero-shot retrieval of held-out clips (default out: runs/vl-demo)")
    d.add_argument("--demo-dir", help="with --llm or --vl: the main demo's run directory whose pre-trained encoder is "
                   "used (default runs/demo, or runs/demo-quick with --quick); --llm runs its pre-training there if "
                   "missing, --vl trains its encoder from scratch instead")
    sub.add_parser("models", help="list registered models with parameter counts")
    return ap


class _Formatter(logging.Formatter):
    """``[component] message`` for progress (``[train] ...`` lines keep their own tag), and
    ``warning: component: message`` for problems."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        component = record.name.rsplit(".", 1)[-1]
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {component}: {msg}"
        return msg if msg.startswith("[") else f"[{component}] {msg}"


def _setup_logging() -> logging.Handler:
    """The library only logs; the command decides what is shown: videomap at INFO, others at WARNING.

    Returns the handler it put on the root logger, which :func:`main` removes again when it
    returns: a second ``main()`` in the same process (tests, notebooks) must not write to the
    first call's ``sys.stderr``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("videomap").setLevel(logging.INFO)
    return handler


def _quiet_transformers() -> None:
    """transformers' own progress bars (loading / writing weight shards) would cut through the log
    lines; the Video-LLM commands show progress through logging instead."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------- commands
# Each handler takes the parsed arguments and returns the exit status. Imports stay inside them:
# the wait policy is chosen before anything loads torch.

def _models(args: argparse.Namespace) -> int:
    import torch

    from .models import create_model, list_models

    for name in list_models():
        with torch.device("meta"):
            m = create_model(name)
        print(f"{name:<20} {sum(p.numel() for p in m.parameters()) / 1e6:7.1f}M params (400 classes, 224px)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    configure_threads(num_workers=0)  # the demo loads its clips in the main process
    if args.llm and args.vl:
        raise ValueError("--llm and --vl: choose one toy model")
    if args.vl:
        from .tasks.vl_demo import run_vl_demo

        run_vl_demo(args.out or ("runs/vl-demo-quick" if args.quick else "runs/vl-demo"), quick=args.quick,
                    seed=args.seed, demo_dir=args.demo_dir)
        return 0
    if args.llm:
        from .tasks.llm_demo import run_llm_demo

        run_llm_demo(args.out or ("runs/llm-demo-quick" if args.quick else "runs/llm-demo"), quick=args.quick,
                     seed=args.seed, demo_dir=args.demo_dir)
        return 0
    if args.demo_dir:
        raise ValueError("--demo-dir: only used with --llm or --vl (the main demo writes to --out)")
    from .tasks.demo import run_demo

    run_demo(args.out or ("runs/demo-quick" if args.quick else "runs/demo"), quick=args.quick, seed=args.seed)
    return 0


def _search(args: argparse.Namespace) -> int:
    from .tasks.vl import format_search, run_search

    configure_threads(num_workers=0)
    print(format_search(run_search(args.index, query=args.query, videos=args.videos, checkpoint=args.checkpoint,
                                   k=args.k, batch_size=args.batch_size, rebuild=args.rebuild)))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .tasks.llm import run_chat

    configure_threads(num_workers=0)
    print(run_chat(args.checkpoint, args.question, video=args.video, image=args.image,
                   max_new_tokens=args.max_new_tokens, llm_dtype=args.llm_dtype))
    return 0


# Job commands: a job file plus overrides, then one runner. A runner's result, when it has one,
# is printed as JSON.

def _pretrain(cfg: JobConfig, args: argparse.Namespace) -> None:
    from .tasks.pretrain import run_pretrain

    run_pretrain(cfg)


def _finetune(cfg: JobConfig, args: argparse.Namespace) -> None:
    from .tasks.finetune import run_finetune

    run_finetune(cfg)


def _evaluate(cfg: JobConfig, args: argparse.Namespace) -> dict:
    from .tasks.finetune import run_evaluate

    return run_evaluate(cfg, args.checkpoint)


def _extract(cfg: JobConfig, args: argparse.Namespace) -> dict:
    from .tasks.extract import run_extract

    return run_extract(cfg, args.checkpoint)


def _export(cfg: JobConfig, args: argparse.Namespace) -> dict:
    from .tasks.export import run_export

    if args.onnx_scan is not None and args.format != "onnx":
        raise ValueError(f"--onnx-scan applies to --format onnx only, got --format {args.format}")
    scan = {} if args.onnx_scan is None else {"onnx_scan": args.onnx_scan}
    return run_export(cfg, args.checkpoint, args.format, args.out, labels=args.labels, **scan)


def _llm_train(cfg: JobConfig, args: argparse.Namespace) -> None:
    from .tasks.llm import run_llm_train

    run_llm_train(cfg)


def _llm_eval(cfg: JobConfig, args: argparse.Namespace) -> dict:
    from .tasks.llm import run_llm_eval

    return run_llm_eval(cfg, args.checkpoint)


def _vl_train(cfg: JobConfig, args: argparse.Namespace) -> None:
    from .tasks.vl import run_vl_train

    run_vl_train(cfg)


def _retrieval_eval(cfg: JobConfig, args: argparse.Namespace) -> dict:
    from .tasks.vl import run_retrieval_eval

    return run_retrieval_eval(cfg, args.checkpoint)


def _job(runner: Callable[[JobConfig, argparse.Namespace], dict | None]) -> Callable[[argparse.Namespace], int]:
    """A job command: load the job file for this command, size the threads, run, print the result."""
    def handler(args: argparse.Namespace) -> int:
        from .config import load_config

        overrides = list(args.overrides)
        if getattr(args, "resume", False):
            overrides.append("train.resume=true")
        cfg = load_config(args.config, overrides, command=args.command)
        configure_threads(cfg.train.num_workers, cfg.train.threads)
        result = runner(cfg, args)
        if result is not None:
            print(json.dumps(result, indent=1))
        return 0

    return handler


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pretrain": _job(_pretrain),
    "finetune": _job(_finetune),
    "evaluate": _job(_evaluate),
    "extract": _job(_extract),
    "export": _job(_export),
    "llm-train": _job(_llm_train),
    "llm-eval": _job(_llm_eval),
    "chat": _chat,
    "vl-train": _job(_vl_train),
    "retrieval-eval": _job(_retrieval_eval),
    "search": _search,
    "demo": _demo,
    "models": _models,
}


def main(argv: list[str] | None = None) -> int:
    set_wait_policy()
    args = _parser().parse_args(argv)
    handler = _setup_logging()
    if (args.command in LLM_COMMANDS + VL_COMMANDS or getattr(args, "llm", False) or getattr(args, "vl", False)
            or getattr(args, "format", None) == "hf"):
        _quiet_transformers()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("VIDEOMAP_DEBUG"):
            raise
        print(f"videomap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as e:
        # a language / text model that is not on disk (local_files_only) or peft missing: a setup problem
        if args.command not in LLM_COMMANDS + VL_COMMANDS or os.environ.get("VIDEOMAP_DEBUG"):
            raise
        print(f"videomap {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
