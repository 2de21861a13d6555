"""Benchmark of the extraction attacks: one table, targets checked in the same run.

    ADVFT_DATA_DIR=/work/shared/data python3 bench/bench_attacks.py [--seeds 3] [--dfme-queries 1000000]
        [--pieces knockoff,dfme] [--device cpu] [--out DIR]

1. KnockoffNets, 20,000 CIFAR-10 queries, soft labels, against assets/victims/mnist_lenet2d.pt and against
   the `lecture` AdvFT model (made here with `python -m core advft --preset lecture`); median over seeds.
   Targets: <= 60 s per attack, >= 85% against the unprotected victim, at most half of that against the
   protected one, which keeps Acc_MF >= Acc_MR - 0.3 points.
2. DFME, soft labels: queries per second and surrogate accuracy at --dfme-queries (1M: <= 10 minutes)
   against the unprotected and the protected victim (one seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.attacks import AttackConfig, run_attack  # noqa: E402
from core.data import resolve_data_dir  # noqa: E402
from core.device import describe, pick_device  # noqa: E402
from core.models import load_model  # noqa: E402
from core.training import load_victim  # noqa: E402
from core.victims import preset_victim  # noqa: E402


def attack(path, config: AttackConfig, data_dir, device) -> dict:
    model, data = load_victim(path, data_dir, device)
    t0 = time.perf_counter()
    r = run_attack(model, data, config, data_dir=data_dir)
    return {"acc": r.surrogate_acc, "best": r.surrogate_best_acc, "agreement": r.agreement, "queries": r.queries,
            "seconds": r.seconds, "wall": time.perf_counter() - t0, "target_acc": r.target_acc,
            "source": r.transfer_source}


def make_lecture_model(out: Path, data_dir, device) -> dict:
    """`python -m core advft --preset lecture`; a finished run already in `out` is reused (--out)."""
    if (out / "metrics.json").is_file():
        m = json.loads((out / "metrics.json").read_text())
        return {**m, "wall": float("nan")}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "core", "advft", "--preset", "lecture", "--out", str(out), "--data-dir", str(data_dir),
           "--device", str(device)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"AdvFT failed: {done.stderr.strip().splitlines()[-1]}")
    m = json.loads(done.stdout)
    m["wall"] = time.perf_counter() - t0
    return m


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--queries", type=int, default=20000, help="KnockoffNets budget")
    p.add_argument("--dfme-queries", type=int, default=1_000_000)
    p.add_argument("--pieces", default="knockoff,dfme")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for the lecture AdvFT run (default: temporary)")
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    device = pick_device(a.device)
    data_dir = resolve_data_dir(a.data_dir)
    pieces = set(a.pieces.split(","))
    victim = preset_victim("lecture")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="advft-bench-attacks-"))
    print(f"device: {describe(device)}; data dir: {data_dir}; torch {torch.__version__}", flush=True)

    lecture = make_lecture_model(out / "lecture", data_dir, device)
    protected = out / "lecture" / "model.pt"
    drop = 100 * (lecture["acc_after"] - lecture["acc_before"])
    print(f"lecture AdvFT: Acc_MR {lecture['acc_before']:.4f} -> Acc_MF {lecture['acc_after']:.4f} "
          f"({drop:+.2f} points), {lecture['wall']:.0f} s", flush=True)

    lines = []
    if "knockoff" in pieces:
        runs = {"unprotected": [], "AdvFT lecture": []}
        for seed in range(a.seeds):
            cfg = AttackConfig(attack="knockoff", labels="soft", queries=a.queries, seed=seed)
            for name, path in (("unprotected", victim), ("AdvFT lecture", protected)):
                runs[name].append(attack(path, cfg, data_dir, device))
                r = runs[name][-1]
                print(f"knockoff seed {seed} vs {name}: acc {r['acc']:.4f} (best {r['best']:.4f}), {r['seconds']:.1f} s",
                      flush=True)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("acc", "best", "agreement", "seconds")}
               for k, v in runs.items()}
        un, pr = med["unprotected"], med["AdvFT lecture"]
        surrogate = load_model(victim).arch
        lines += [
            f"\nKnockoffNets, {a.queries} CIFAR-10 queries ({runs['unprotected'][0]['source']}), soft labels, "
            f"surrogate FULL_WIDTH[{surrogate}], median of {a.seeds} seeds",
            "| target | surrogate acc (final) | best | agreement | seconds | target | met |",
            "|---|---|---|---|---|---|---|",
            f"| unprotected mnist_lenet2d | {un['acc']:.4f} | {un['best']:.4f} | {un['agreement']:.4f} | {un['seconds']:.1f} "
            f"| acc >= 0.85, <= 60 s | {yes(un['acc'] >= 0.85)}, {yes(un['seconds'] <= 60)} |",
            f"| AdvFT lecture | {pr['acc']:.4f} | {pr['best']:.4f} | {pr['agreement']:.4f} | {pr['seconds']:.1f} "
            f"| acc <= unprotected / 2 = {un['acc'] / 2:.4f} | {yes(pr['acc'] <= un['acc'] / 2)} |",
            f"| AdvFT fidelity | Acc_MF - Acc_MR = {drop:+.2f} points | | | | >= -0.3 | {yes(drop >= -0.3)} |",
            "per seed (unprotected / protected): " + ", ".join(
                f"{u['acc']:.4f}/{q['acc']:.4f}" for u, q in zip(runs["unprotected"], runs["AdvFT lecture"])),
        ]
    if "dfme" in pieces:
        cfg = AttackConfig(attack="dfme", labels="soft", queries=a.dfme_queries, seed=0)
        rows = [(name, attack(path, cfg, data_dir, device)) for name, path in
                (("unprotected", victim), ("AdvFT lecture", protected))]
        lines += [f"\nDFME, {a.dfme_queries} queries, soft labels, batch {cfg.dfme_batch}, m = {cfg.directions}, "
                  f"{cfg.queries_per_iteration} queries per iteration",
                  "| target | surrogate acc (final) | best | agreement | queries | seconds | queries/s | 1M in <= 600 s |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in rows:
            qps = r["queries"] / r["seconds"]
            lines.append(f"| {name} | {r['acc']:.4f} | {r['best']:.4f} | {r['agreement']:.4f} | {r['queries']} | "
                         f"{r['seconds']:.0f} | {qps:.0f} | {yes(1e6 / qps <= 600)} (projected {1e6 / qps:.0f} s) |")
    print("\n".join(lines))
    print(f"\nruns under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
