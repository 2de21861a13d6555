"""`python -m core bench`: the benchmark table of the README.

1. The `lecture` preset end to end (data loading, AdvFT, evaluation, writing the run), wall time
   and the quality targets.
2. Engine overhead: AdvFT steps/s through the engine against a bare loop doing the same
   forward/backward/optimiser work on the same models and batch sizes, measured in the same run,
   in alternating blocks so that machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from .advft import AdvFT, fine_tune_loss, generator_loss, preset_config
from .data import to_float
from .device import describe, pick_device
from .training import load_victim, new_trainer, run_advft
from .victims import preset_victim

TARGETS = {
    "wall time (s)": ("seconds_wall", lambda v: v <= 90, "<= 90"),
    "Acc_MF - Acc_MR (points)": ("acc_drop", lambda v: v >= -0.3, ">= -0.3"),
    "KL_test": ("kl_test", lambda v: v <= 1e-2, "<= 1e-2"),
    "OOD agreement": ("ood_agreement", lambda v: v <= 0.30, "<= 0.30"),
    "OOD shift / ID shift": ("shift_ratio", lambda v: v >= 5, ">= 5"),
}


def lecture_run(out: Path, data_dir, device, seed: int) -> dict:
    t0 = time.perf_counter()
    m = dict(run_advft(out, preset_victim("lecture"), preset_config("lecture", seed=seed), data_dir, device,
                       preset="lecture").metrics)
    m["seconds_wall"] = time.perf_counter() - t0
    m["acc_drop"] = 100 * (m["acc_after"] - m["acc_before"])
    m["shift_ratio"] = m["ood_shift"] / max(m["id_shift"], 1e-12)
    return m


def bare_steps(t: AdvFT, n: int) -> None:
    """The same work as n engine G steps then n engine F steps, with nothing but the math."""
    cfg, gen, model, ref = t.config, t.generator, t.model, t.reference
    bs, x_train = cfg.batch_size, t.data.x_train
    for _ in range(n):
        x = gen(torch.randn(bs, cfg.latent_dim).to(t.device))
        loss = generator_loss(model.features(x), ref.features(x), cfg.distance)
        for p, g in zip(gen.parameters(), torch.autograd.grad(loss, list(gen.parameters()))):
            p.grad = g
        t.opt_g.step()
    for _ in range(n):
        idx = torch.randint(len(x_train), (bs,))
        with torch.no_grad():
            x = torch.cat([to_float(x_train[idx]).to(t.device), gen(torch.randn(bs, cfg.latent_dim).to(t.device))])
            f_ref = ref.features(x)
        f = model.features(x)
        loss = fine_tune_loss(f[:bs], f_ref[:bs], f[bs:], f_ref[bs:], cfg.margin, cfg.distance, cfg.fake_reduce)[0]
        t.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        t.opt_f.step()


def engine_steps(t: AdvFT, n: int) -> None:
    for _ in range(n):
        t.step_generator()
    for _ in range(n):
        t.step_model()


def overhead(data_dir, device, blocks: int = 5, n: int = 20) -> dict:
    victim, data = load_victim(preset_victim("lecture"), data_dir, device)
    t = new_trainer(victim, data, preset_config("lecture", eval_train_size=100, eval_ood_size=100), data_dir, device)
    engine_steps(t, 3)  # warm-up; both loops then update the same models and optimisers
    bare_steps(t, 3)
    rates = {"engine": [], "bare": []}
    for _ in range(blocks):
        for name, fn in (("engine", engine_steps), ("bare", bare_steps)):
            t0 = time.perf_counter()
            fn(t, n)
            rates[name].append(2 * n / (time.perf_counter() - t0))
    e, b = statistics.median(rates["engine"]), statistics.median(rates["bare"])
    return {"engine_steps_per_s": e, "bare_steps_per_s": b, "ratio": e / b}


def main(out: str | None, seeds: int, data_dir, device: str = "auto") -> int:
    device = pick_device(device)
    print(f"device: {describe(device)}; data dir: {data_dir}; torch {torch.__version__}")
    out_root = Path(out) if out else Path(tempfile.mkdtemp(prefix="advft-bench-"))
    rows = []
    for seed in range(seeds):
        run_dir = out_root / f"lecture-seed{seed}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        rows.append(lecture_run(run_dir, data_dir, device, seed))
    ov = overhead(data_dir, device)

    print("\n| lecture preset (MNIST lenet2d) | " + " | ".join(f"seed {s}" for s in range(seeds)) + " | target | met |")
    print("|---|" + "---|" * seeds + "---|---|")
    print("| Acc_MR | " + " | ".join(f"{r['acc_before']:.4f}" for r in rows) + " | | |")
    print("| Acc_MF | " + " | ".join(f"{r['acc_after']:.4f}" for r in rows) + " | | |")
    for label, (key, ok, target) in TARGETS.items():
        vals = [r[key] for r in rows]
        fmt = "{:.2e}" if key == "kl_test" else "{:.2f}"
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in vals) + f" | {target} | "
              f"{'yes' if all(ok(v) for v in vals) else 'NO'} |")
    print("| KL_train | " + " | ".join(f"{r['kl_train']:.2e}" for r in rows) + " | | |")
    print("| ID shift / OOD shift | " + " | ".join(f"{r['id_shift']:.2f} / {r['ood_shift']:.2f}" for r in rows) + " | | |")
    print(f"\n| engine overhead | engine steps/s | bare steps/s | ratio | target | met |\n|---|---|---|---|---|---|\n"
          f"| lecture models, batch {preset_config('lecture').batch_size} | {ov['engine_steps_per_s']:.1f} | "
          f"{ov['bare_steps_per_s']:.1f} | {ov['ratio']:.2f} | >= 0.8 | {'yes' if ov['ratio'] >= 0.8 else 'NO'} |")
    print(f"\nruns written under {out_root}")
    return 0
