"""Benchmark of the grid runner: one 4-cell grid, run in this process one cell after another and
on a local Ray cluster of this machine's cores; one table.

    ADVFT_DATA_DIR=/work/shared/data python3 bench/bench_grid.py [--cpus 2] [--steps 40] [--queries 2000]

The grid: margins 5 and 20 x seeds 0 and 1, each cell a short AdvFT run of the committed MNIST victim
(1 epoch of --steps model steps) and a KnockoffNets attack of --queries CIFAR-10 queries on M_F, on
MNIST cut to 3,000 / 1,000 images (as the tests do). Rows:
    local, 1 thread     the cells one after another, one torch thread (what each Ray task gets)
    local, N threads    the default executor as a user runs it (torch's threads = the cores)
    ray, N workers      --executor ray with a local cluster of N CPUs: one cell per CPU at a time
Ray's start-up (ray.init, before the first cell) is reported apart from the grid's wall time. Ray's
overhead per cell = the driver's wall time from submitting a cell to having its row and files, minus
the cell's own work measured inside the worker (scheduling, worker start and imports, transfer).
The same rows come out of every executor at the same thread count (tests/test_grid.py checks it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.advft import AdvFTConfig  # noqa: E402
from core.attacks import AttackConfig  # noqa: E402
from core.data import resolve_data_dir  # noqa: E402
from core.experiments import margin_cells, run_cell  # noqa: E402
from core.grid import RayExecutor, run_grid  # noqa: E402
from core.victims import VICTIMS_DIR  # noqa: E402


def small_data(data_dir: Path, out: Path) -> Path:
    for name, n_train, n_test in (("mnist", 3000, 1000), ("cifar10", 2000, 2000)):
        with np.load(data_dir / f"{name}.npz") as z:
            np.savez(out / f"{name}.npz", x_train=z["x_train"][:n_train], y_train=z["y_train"][:n_train],
                     x_test=z["x_test"][:n_test], y_test=z["y_test"][:n_test])
    return out


def untimed(value):
    """A row without its wall-clock fields (the rest is deterministic at a given thread count)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def timed(cells, out, data_dir, executor=None) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = run_grid(cells, out, run_cell, executor, data_dir=data_dir, retries=0)
    if result.failed:
        raise SystemExit(f"a cell failed: {result.records[result.failed[0]]['message']}")
    return time.perf_counter() - t0, result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster")
    p.add_argument("--steps", type=int, default=40, help="AdvFT model steps per cell (I_F; I_G is a third)")
    p.add_argument("--queries", type=int, default=2000, help="KnockoffNets queries per cell")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    config = AdvFTConfig(epochs=1, i_g=max(1, a.steps // 3), i_f=a.steps, batch_size=32, probe_size=100,
                         eval_train_size=1000, eval_ood_size=500)
    attack = AttackConfig(attack="knockoff", queries=a.queries, epochs=5, eval_size=1000)
    cells = margin_cells(str(VICTIMS_DIR / "mnist_lenet2d.pt"), config, attack, [5.0, 20.0], [0, 1])
    default_threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = small_data(resolve_data_dir(a.data_dir), Path(tempfile.mkdtemp(dir=tmp)))

        torch.set_num_threads(1)
        wall, one = timed(cells, tmp / "local1", data_dir)
        rows.append(("local, 1 thread", 1, wall, one))
        torch.set_num_threads(default_threads)
        wall, many = timed(cells, tmp / "localN", data_dir)
        rows.append((f"local, {default_threads} threads", 1, wall, many))

        executor = RayExecutor(num_cpus=a.cpus)
        t0 = time.perf_counter()
        executor.open("cpu")  # ray.init here, so the grid's wall time below is the cells' alone
        startup = time.perf_counter() - t0
        try:
            wall, ray = timed(cells, tmp / "ray", data_dir, executor)
        finally:
            executor.close()
        rows.append((f"ray, {a.cpus} workers", executor.slots, wall, ray))

    base = rows[0][2]
    print(f"4-cell grid (margins 5, 20 x seeds 0, 1; AdvFT {config.i_g}+{config.i_f} steps, KnockoffNets "
          f"{a.queries} queries per cell) on {os.cpu_count()} cores\n")
    print("| executor | cells at once | wall (s) | cell work (s, sum) | speed-up vs local 1 thread | "
          "Ray overhead per cell (s) |")
    print("|---|---|---|---|---|---|")
    for name, at_once, wall, result in rows:
        work = sum(r["seconds"] for r in result.records.values())
        overhead = "-"
        if name.startswith("ray"):
            per_cell = [r["wall"] - r["seconds"] for r in result.records.values()]
            overhead = f"{statistics.mean(per_cell):.2f} (max {max(per_cell):.2f})"
        print(f"| {name} | {at_once} | {wall:.1f} | {work:.1f} | {base / wall:.2f}x | {overhead} |")
    print(f"\nRay start-up (ray.init, local cluster): {startup:.1f} s, not in the wall times above.")
    same = all(untimed(one.row(n)) == untimed(ray.row(n)) for n in one.records)
    print(f"rows identical (timings aside) between local 1 thread and Ray: {same}")
    print(f"load average while it ran: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the cores "
          "slows the parallel row most)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
