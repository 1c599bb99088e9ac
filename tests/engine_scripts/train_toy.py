"""Launchable toy training run for the engine tests (plain python or torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # launched as a script: make ``tests`` importable

from tests.engine_scripts import toy  # noqa: E402
from videomap.engine import Trainer, barrier, cleanup_distributed, is_main_process  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # progress to stdout
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--save-every", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--ema", type=float, default=0.9)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--modes", default="auto",
                   help="comma-separated distributed modes, run in turn; 'mode:p' sets dropout p")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--resume-check", type=int, default=0,
                   help="afterwards, copy checkpoint-N to <out>-resumed and resume a fresh trainer from it")
    p.add_argument("--stall-after-calls", type=int, default=0,
                   help="block forever once loss_fn was called this many times (the test then kills us)")
    args = p.parse_args()
    torch.set_num_threads(1)

    calls = 0
    stall_marker = Path(args.out) / "stalled"

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        if args.stall_after_calls and calls > args.stall_after_calls:
            stall_marker.write_text(str(calls))
            time.sleep(3600)
        return toy.loss_fn(model, batch)

    for entry in args.modes.split(","):
        mode, _, drop = entry.partition(":")
        dropout = float(drop) if drop else args.dropout
        out = os.path.join(args.out, entry.replace(":", "_drop")) if "," in args.modes else args.out
        cfg = toy.make_config(out, mode, args.epochs, args.batch, args.accum, args.save_every,
                              args.ema if mode != "fsdp" else 0.0, args.clip)
        trainer = Trainer(toy.make_model(dropout), loss_fn, toy.NoisyDataset(args.n), cfg,
                          evaluate_fn=toy.make_eval_fn(11))
        summary = trainer.fit(resume=args.resume)
        if is_main_process():
            Path(out, "summary.json").write_text(json.dumps(summary))
        if args.resume_check:
            again = out + "-resumed"
            if is_main_process():
                shutil.copytree(Path(out, f"checkpoint-{args.resume_check}"),
                                Path(again, f"checkpoint-{args.resume_check}"))
            barrier()
            cfg.output_dir = again
            Trainer(toy.make_model(dropout), loss_fn, toy.NoisyDataset(args.n), cfg,
                    evaluate_fn=toy.make_eval_fn(11)).fit(resume=True)
    cleanup_distributed()


if __name__ == "__main__":
    main()
