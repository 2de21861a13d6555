"""Does the `lecture` preset protect convincingly? One table, targets checked in the same run.

    ADVFT_DATA_DIR=/work/shared/data python3 bench/bench_lecture.py [--seeds 3] [--out DIR] [-- ADVFT FLAGS]

Flags after `--` go to `python -m core advft` (e.g. `-- --margin 30 --epochs 15 --lr-schedule cosine`), to
try candidate settings before they become the preset.

For each seed s: `python -m core advft --preset lecture --seed s` (timed as a user would, process
start to exit), then the project's strong thief against its M_F, KnockoffNets with 20k soft CIFAR-10
queries and the full-width surrogate, seed s. Medians over the seeds:
    KnockoffNets best surrogate accuracy <= 30%, Acc_MF >= Acc_MR - 0.1 points, KL_test <= 5e-3,
    CLI wall time <= 90 s.
The unprotected victim is attacked with the same seeds for the reference column.
"""

from __future__ import annotations

import argparse
import json
import os
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
from core.runs import RunDir  # noqa: E402
from core.training import load_victim  # noqa: E402
from core.victims import preset_victim  # noqa: E402


def protect(seed: int, out: Path, data_dir, flags: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "core", "advft", "--preset", "lecture", "--seed", str(seed), "--out", str(out),
           "--data-dir", str(data_dir), *flags]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"AdvFT failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout), time.perf_counter() - t0


def steal(target, seed: int, data_dir) -> dict:
    model, data = load_victim(target, data_dir)
    r = run_attack(model, data, AttackConfig(seed=seed), data_dir=data_dir)
    return {"best": r.surrogate_best_acc, "final": r.surrogate_acc, "seconds": r.seconds}


def med(values) -> float:
    return statistics.median(values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for the AdvFT runs (default: temporary)")
    p.add_argument("flags", nargs="*", help="after --: flags for `python -m core advft`")
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data_dir = resolve_data_dir(a.data_dir)
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-lecture-"))
    rows = []
    for seed in range(a.seeds):
        metrics, wall = protect(seed, out / f"lecture-s{seed}", data_dir, a.flags)
        # The unprotected column does not depend on the AdvFT flags: kept in --out for the next candidate.
        cached = out / f"unprotected-s{seed}.json"
        before = json.loads(cached.read_text()) if cached.is_file() else steal(preset_victim("lecture"), seed, data_dir)
        cached.write_text(json.dumps(before))
        after = steal(out / f"lecture-s{seed}" / "model.pt", seed, data_dir)
        rows.append({"seed": seed, "wall": wall, "acc_mr": metrics["acc_before"], "acc_mf": metrics["acc_after"],
                     "kl_test": metrics["kl_test"], "before": before, "after": after})
        print(json.dumps(rows[-1]), flush=True)

    cfg = RunDir(out / "lecture-s0").config().advft  # the settings the runs were made with (flags included)
    load = os.getloadavg()
    print(f"\nlecture preset: m = {cfg.margin:g}, N = {cfg.epochs}, I_G = {cfg.i_g}, I_F = {cfg.i_f}, "
          f"lr_f {cfg.lr_f:g} ({cfg.lr_schedule}) · {os.cpu_count()} CPUs · load {load[0]:.2f} {load[1]:.2f}")
    best = [r["after"]["best"] for r in rows]
    drop = [100 * (r["acc_mf"] - r["acc_mr"]) for r in rows]
    kl = [r["kl_test"] for r in rows]
    wall = [r["wall"] for r in rows]
    table = [
        ("KnockoffNets 20k soft vs M_R: best (final)", f"{100 * med([r['before']['best'] for r in rows]):.1f}% "
         f"({100 * med([r['before']['final'] for r in rows]):.1f}%)", "", True),
        ("KnockoffNets 20k soft vs M_F: best (final)", f"{100 * med(best):.1f}% "
         f"({100 * med([r['after']['final'] for r in rows]):.1f}%)  seeds: "
         + " / ".join(f"{100 * b:.1f}" for b in best), "<= 30%", med(best) <= 0.30),
        ("Acc_MF - Acc_MR (points)", f"{med(drop):+.2f}  seeds: " + " / ".join(f"{d:+.2f}" for d in drop),
         ">= -0.1", med(drop) >= -0.1),
        ("KL_test", f"{med(kl):.1e}  seeds: " + " / ".join(f"{k:.1e}" for k in kl), "<= 5e-3", med(kl) <= 5e-3),
        ("CLI wall time (s)", f"{med(wall):.1f}  seeds: " + " / ".join(f"{w:.0f}" for w in wall), "<= 90",
         med(wall) <= 90),
    ]
    print(f"{'measure (median of ' + str(a.seeds) + ' seeds)':46s} {'measured':44s} {'target':8s} met")
    for name, value, target, ok in table:
        print(f"{name:46s} {value:44s} {target:8s} {'' if not target else 'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
