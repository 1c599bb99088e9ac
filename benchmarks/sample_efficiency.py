"""Sample efficiency on the demo's data: top-1 against the number of labels, per pre-training objective.

    python benchmarks/sample_efficiency.py [--quick] [--seeds 3] [--fractions 0.1 0.25 1.0]
        [--arms frame token video scratch frame:loss_on=target_hidden ...] [--out DIR]

The paper's Table 7 compares frame-wise AR (VideoMAP), token-wise AR and video-wise alignment
(UMT) pre-training; its data-efficiency claim is that pre-training pays most with few labels.
Here each objective pre-trains the demo's VideoHybrid on the demo's unlabeled clips, then
fine-tunes on a balanced fraction of a labelled pool; "scratch" skips pre-training. Every arm has
the same schedule.

An arm is ``objective[:key=value,...]``: the keys are ``pretrain.*`` fields (``loss_on``,
``cls_weight``, ...) or ``attn_wiring``, so one run also measures the choices left open by the
papers. Arms with settings fine-tune only at ``--ablation-fractions`` (the few-label end, where
pre-training matters and fine-tuning is cheap).

Every finished (arm, labels, seed) is appended to ``results.jsonl`` in the output directory and
skipped when found there, so an interrupted run resumes, and runs over disjoint ``--seed-list``s
can share one directory (e.g. two 1-thread processes on two cores). ``--report`` only tabulates.
Prints a table (mean ± std over seeds), writes ``sample_efficiency.json``, ``.md`` and ``.png``
to the output directory (default ``bench_out/sample_efficiency``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary  # noqa: E402
from videomap.data import make_synthetic_dataset  # noqa: E402
from videomap.tasks.demo import demo_job, demo_params  # noqa: E402
from videomap.tasks.finetune import run_evaluate, run_finetune  # noqa: E402
from videomap.tasks.pretrain import run_pretrain  # noqa: E402

OBJECTIVES = ("frame", "token", "video", "scratch")
# arm settings that change the architecture (so they apply to pre-training and fine-tuning)
MODEL_KEYS = ("attn_wiring", "keep_dt_bias_init")


def parse_arm(arm: str) -> tuple[str, dict[str, str]]:
    """``"frame:loss_on=target_hidden,cls_weight=0"`` -> ``("frame", {...})``, checked."""
    objective, _, rest = arm.partition(":")
    if objective not in OBJECTIVES:
        raise SystemExit(f"--arms {arm!r}: the objective must be one of {OBJECTIVES}")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise SystemExit(f"--arms {arm!r}: expected key=value after ':', got {item!r}")
        settings[key] = value
    if objective == "scratch" and set(settings) - set(MODEL_KEYS):
        raise SystemExit(f"--arms {arm!r}: scratch takes only {MODEL_KEYS}")
    return objective, settings


def _subset(list_file: str, n: int, dst: Path) -> str:
    """The first ``n`` lines: the synthetic lists cycle through the labels, so they are balanced."""
    with open(list_file) as f:
        lines = f.read().splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n")
    return str(dst)


def _slug(arm: str) -> str:
    return arm.replace(":", "_").replace(",", "_").replace("=", "-")


def _done(out: Path) -> dict[tuple[str, int, int], float]:
    records = out / "results.jsonl"
    if not records.exists():
        return {}
    done = {}
    for line in records.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            done[(r["arm"], r["labels"], r["seed"])] = r["top1"]
    return done


def run(args: argparse.Namespace) -> None:
    p = demo_params(args.quick)
    pool = args.pool or p["num_train"] * 5
    out = Path(args.out).resolve()
    train_list, val_list, unlabeled = _data(out / "data", p, pool)
    counts = _counts(args.fractions, pool)
    ablation_counts = _counts(args.ablation_fractions, pool)
    for seed in args.seed_list:
        for arm in args.arms:
            objective, settings = parse_arm(arm)
            model = [f"model.overrides.{k}={v}" for k, v in settings.items() if k in MODEL_KEYS]
            done = _done(out)  # re-read: another process may share this directory
            todo = [n for n in (ablation_counts if settings else counts) if (arm, n, seed) not in done]
            if not todo or not _claim(out, arm, seed):
                continue
            encoder = None
            if objective != "scratch":
                cfg = demo_job("pretrain", model + [
                    f"data.train_list={unlabeled}", f"pretrain.objective={objective}", "train.plot=false",
                    f"train.output_dir={out / f'pre_{_slug(arm)}_s{seed}'}",
                ] + [f"pretrain.{k}={v}" for k, v in settings.items() if k not in MODEL_KEYS], args.quick, seed)
                encoder = run_pretrain(cfg)["encoder"]
            for n in todo:
                run_dir = out / f"ft_{_slug(arm)}_n{n}_s{seed}"
                cfg = demo_job("finetune", model + [
                    f"data.train_list={_subset(train_list, n, out / f'labels_{n}.csv')}",
                    f"data.val_list={val_list}", "train.plot=false", f"train.output_dir={run_dir}",
                ] + ([f"model.pretrained={encoder}"] if encoder else []), args.quick, seed)
                t0 = time.time()
                run_finetune(cfg)
                top1 = run_evaluate(cfg, str(run_dir / "final"))["top1"]
                record = {"arm": arm, "labels": n, "seed": seed, "top1": top1, "ft_seconds": time.time() - t0}
                with open(out / "results.jsonl", "a") as f:  # one short line per append: safe to share
                    f.write(json.dumps(record) + "\n")
                print(f"seed {seed} {arm:<8} {n:>4} labels: top-1 {top1:.1f}", flush=True)


def _data(data: Path, p: dict, pool: int) -> tuple[str, str, str]:
    """The clips, written once per output directory (a second process on the same directory
    reuses them instead of rewriting files the first is reading)."""
    spec = json.dumps({"pool": pool, **p}, sort_keys=True)
    marker = data / "complete.json"
    if not marker.exists() or marker.read_text() != spec:
        make_synthetic_dataset(data, num_train=pool, num_val=p["num_val"], num_frames=p["clip_frames"],
                               size=p["size"], seed=0)
        make_synthetic_dataset(data / "unlabeled", num_train=p["num_unlabeled"], num_val=0,
                               num_frames=p["clip_frames"], size=p["size"], seed=1)
        marker.write_text(spec)
    return str(data / "train.csv"), str(data / "val.csv"), str(data / "unlabeled" / "train.csv")


def _claim(out: Path, arm: str, seed: int) -> bool:
    """Mark (arm, seed) as this process's; False if a live process already holds it."""
    path = out / "claims" / f"{_slug(arm)}_s{seed}"
    path.parent.mkdir(exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = int(path.read_text() or 0)
            if owner == os.getpid():
                return True
            os.kill(owner, 0)
            return False  # its owner is running
        except (ProcessLookupError, ValueError):
            path.write_text(str(os.getpid()))  # left by a process that died: take it over
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _counts(fractions: list[float], pool: int) -> list[int]:
    return sorted({max(6, round(f * pool / 6) * 6) for f in fractions})


def collect(args: argparse.Namespace) -> dict:
    """The table's data from ``results.jsonl``: every arm asked for, every label count it has."""
    p = demo_params(args.quick)
    done = _done(Path(args.out))
    results: dict[str, dict[int, list[float]]] = {}
    for arm in args.arms:
        by_n: dict[int, list[float]] = {}
        for (a, n, _seed), top1 in sorted(done.items()):
            if a == arm:
                by_n.setdefault(n, []).append(top1)
        if by_n:
            results[arm] = dict(sorted(by_n.items()))
    counts = sorted({n for by_n in results.values() for n in by_n})
    return {"counts": counts, "results": results, "params": p, "pool": args.pool or p["num_train"] * 5,
            "seeds": max((len(v) for by_n in results.values() for v in by_n.values()), default=0),
            "machine": machine_summary()}


def _cell(vals: list[float] | None) -> str:
    if not vals:
        return "–"
    spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""  # one seed: no spread
    return f"{statistics.mean(vals):.1f}{spread}"


def table(res: dict) -> str:
    counts = res["counts"]
    rows = ["| arm | " + " | ".join(f"{n} labels" for n in counts) + " |", "|---" * (len(counts) + 1) + "|"]
    for arm, by_n in res["results"].items():
        rows.append(f"| {arm} | " + " | ".join(_cell(by_n.get(n)) for n in counts) + " |")
    return "\n".join(rows)


def report(res: dict, out: Path) -> None:
    text = table(res)
    print("\n" + text + f"\n\nmean ± std over seeds (n = seeds), top-1 on {res['params']['num_val']} "
          f"validation clips, chance 16.7\n")
    (out / "sample_efficiency.md").write_text(text + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for arm, by_n in res["results"].items():
        ns = sorted(by_n)
        means = [statistics.mean(by_n[n]) for n in ns]
        sds = [statistics.stdev(by_n[n]) if len(by_n[n]) > 1 else 0.0 for n in ns]
        ax.errorbar(ns, means, yerr=sds, marker="o", capsize=3, label=arm,
                    linestyle="--" if ":" in arm else "-", alpha=0.7 if ":" in arm else 1.0)
    ax.axhline(100 / 6, color="0.6", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("labelled clips")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"sample efficiency by pre-training objective ({res['seeds']} seeds, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sample_efficiency.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one seed (for the test suite)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (or name them with --seed-list)")
    ap.add_argument("--seed-list", type=int, nargs="+", default=None)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    ap.add_argument("--ablation-fractions", type=float, nargs="+", default=[0.1, 0.25])
    ap.add_argument("--arms", nargs="+", default=list(OBJECTIVES),
                    help="objective[:key=value,...], e.g. frame:loss_on=target_hidden")
    ap.add_argument("--pool", type=int, default=None, help="labelled pool size (default: 5x the demo's labels)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this process")
    ap.add_argument("--report", action="store_true", help="only tabulate what results.jsonl holds")
    ap.add_argument("--out", default="bench_out/sample_efficiency")
    args = ap.parse_args(argv)
    for arm in args.arms:
        parse_arm(arm)
    if args.quick:
        args.seeds = 1
    args.seed_list = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    if not args.report:
        run(args)
    res = collect(args)
    res["seconds_this_run"] = time.time() - t0
    (out / "sample_efficiency.json").write_text(json.dumps(res, indent=1))
    report(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
