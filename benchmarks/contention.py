"""Training throughput on a shared machine: clips/s alone and next to busy neighbours.

    python benchmarks/contention.py [--neighbours 0 1] [--seconds 20] [--rounds 2] [--out bench_out]

The workload is fine-tuning steps of the demo's VideoHybrid at 64x64 (batch 16, 8 frames,
tensors in memory, so only compute is measured). A neighbour is a process that keeps one core
busy (a Python loop). Policies, each in a fresh process because OpenMP reads its wait policy
once at start-up:

* ``spin``: OpenMP's default waiting (``OMP_WAIT_POLICY`` unset), torch's default thread count;
* ``videomap``: what the ``videomap`` command does: passive waiting when other work already
  keeps CPUs busy at start-up (:func:`videomap.threads.set_wait_policy`), the default otherwise, and
  :func:`videomap.threads.configure_threads` (threads = CPUs in the affinity mask).

Rounds alternate the order of the cases; the median is reported. Targets: with one neighbour,
``videomap`` keeps >= 50 % of its unloaded rate; alone it loses <= 5 % against ``spin``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_summary, run_context, run_json_case, update_doc_section  # noqa: E402

POLICIES = ("spin", "videomap")


def run_case(policy: str, seconds: float) -> dict:
    if policy == "videomap":  # what the command does, before torch (and OpenMP) load
        from videomap.threads import set_wait_policy

        set_wait_policy()
    import torch

    from videomap.models import create_model
    from videomap.threads import configure_threads

    if policy == "videomap":
        configure_threads(num_workers=0)
    torch.manual_seed(0)
    model = create_model("videomap_tiny", num_classes=6, num_frames=8, img_size=64, embed_dim=64, depth=4,
                         attn_every=4, patch_size=8, tubelet_size=2, global_pool="avg").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 8, 64, 64)
    y = torch.randint(0, 6, (16,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return {"policy": policy, "clips_per_s": n * 16 / (time.perf_counter() - t0),
            "threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _case(policy: str, seconds: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    return run_json_case([sys.executable, __file__, "--case", policy, "--seconds", str(seconds)], env, policy)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neighbours", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the section in docs/performance.md")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.seconds)))
        return 0

    rates: dict[tuple[str, int], list[float]] = {}
    info: dict[str, dict] = {}
    for r in range(args.rounds):
        for k in args.neighbours:
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
            try:
                order = POLICIES if r % 2 == 0 else POLICIES[::-1]
                for policy in order:
                    res = _case(policy, args.seconds)
                    rates.setdefault((policy, k), []).append(res["clips_per_s"])
                    info.setdefault(policy, {"threads": res["threads"], "waits": {}})["waits"][k] = res["wait_policy"]
                    print(f"round {r} neighbours {k} {policy:<9} {res['clips_per_s']:6.1f} clips/s "
                          f"({res['threads']} threads, wait {res['wait_policy']})", flush=True)
            finally:
                for p in busy:
                    p.kill()
                    p.wait()

    med = {key: statistics.median(v) for key, v in rates.items()}
    header = "| policy | threads | wait | " + " | ".join(f"{k} busy neighbour(s): clips/s" for k in args.neighbours)
    rows = [header + " |", "|---" * (3 + len(args.neighbours)) + "|"]
    for policy in POLICIES:
        cells = []
        for k in args.neighbours:
            rel = f" ({med[(policy, k)] / med[(policy, 0)]:.0%} of alone)" if k and 0 in args.neighbours else ""
            cells.append(f"{med[(policy, k)]:.1f}{rel}")
        waits = ", ".join(f"{w} ({k} busy)" for k, w in sorted(info[policy]["waits"].items()))
        head = f"| {policy} | {info[policy]['threads']} | {waits} | "
        rows.append(head + " | ".join(cells) + " |")
    table = "\n".join(rows)
    verdicts = []
    if 0 in args.neighbours and 1 in args.neighbours:
        kept = med[("videomap", 1)] / med[("videomap", 0)]
        verdicts.append(f"videomap keeps {kept:.0%} of its unloaded rate with one neighbour "
                        f"(target >= 50 %: {'met' if kept >= 0.5 else 'NOT met'})")
    if 0 in args.neighbours:
        loss = 1 - med[("videomap", 0)] / med[("spin", 0)]
        verdicts.append(f"alone, videomap is {loss:+.1%} slower than spin (target <= 5 %: "
                        f"{'met' if loss <= 0.05 else 'NOT met'})")
    machine = machine_summary()
    print("\n" + table + "\n\n" + "; ".join(verdicts))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "contention.json").write_text(json.dumps({"rates": {f"{p}|{k}": v for (p, k), v in rates.items()},
                                                     "machine": machine}, indent=1))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(POLICIES)
    for i, policy in enumerate(POLICIES):
        ax.bar([k + i * width for k in range(len(args.neighbours))], [med[(policy, k)] for k in args.neighbours],
               width=width, label=policy)
    ax.set_xticks([k + width / 2 for k in range(len(args.neighbours))], [str(k) for k in args.neighbours])
    ax.set_xlabel("busy neighbour processes")
    ax.set_ylabel("training clips/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "contention.png", dpi=110)
    if args.write_doc:
        cmd = (f"python benchmarks/contention.py --neighbours {' '.join(map(str, args.neighbours))} "
               f"--seconds {args.seconds:g} --rounds {args.rounds} --write-doc")
        body = (f"`{cmd}` {run_context(machine)}; median of {args.rounds} rounds:\n\n{table}\n\n"
                + ".\n".join(verdicts) + ".")
        update_doc_section(REPO / "docs" / "performance.md", "## Throughput on a shared machine", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
