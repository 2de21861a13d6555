"""Command line: `python -m core <command> --help`.

Every user error (bad value, missing data, unreadable checkpoint) ends as one line on stderr and
exit status 2; nothing half-written is left behind (all files are written atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .advft import AdvFTConfig, ConfigError, PRESETS, TrainingDiverged, preset_config
from .data import DATASETS, DataError, OOD_SOURCES, resolve_data_dir
from .device import describe, pick_device
from .models import ARCHS, CheckpointError, save_model
from .runs import RunDir, atomic_write_json, list_runs, resolve_runs_dir

USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError)


class CLIError(Exception):
    pass


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {v})")
        return v
    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _margin(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return v


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=None)  # disable=None: no bar when stderr is not a terminal (CI logs)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="datasets folder (default: $ADVFT_DATA_DIR, else ./data)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")


# ---------------------------------------------------------------- train-victim


def cmd_train_victim(a) -> int:
    from .data import load_dataset
    from .victim import VictimConfig, train_victim, victim_name

    device = pick_device(a.device)
    data = load_dataset(a.dataset, a.data_dir)
    print(f"data: {data.source}\ndevice: {describe(device)}", file=sys.stderr)
    cfg = VictimConfig(arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, shift=a.shift, seed=a.seed)
    out = Path(a.out)
    bar = _progress(a.epochs, f"train {a.dataset}/{a.arch}")
    t0 = time.perf_counter()

    def progress(epoch, acc):
        bar.update(1)
        bar.set_postfix(test_acc=f"{acc:.4f}")

    model, acc = train_victim(data, cfg, device, progress)
    bar.close()
    seconds = time.perf_counter() - t0
    name = victim_name(a.dataset, a.arch)
    info = {"test_accuracy": acc, "config": asdict(cfg), "dataset": a.dataset, "data_source": data.source,
            "command": "python -m core " + " ".join(shlex.quote(x) for x in a.argv),
            "seconds": round(seconds, 1), "device": describe(device),
            "trained": time.strftime("%Y-%m-%d")}
    save_model(model.cpu(), out / f"{name}.pt", **info)
    atomic_write_json(out / f"{name}.json", info)
    print(f"{out / (name + '.pt')}: test accuracy {acc:.4f} ({seconds:.0f} s)")
    return 0


# ---------------------------------------------------------------- advft


def _advft_config(a) -> AdvFTConfig:
    overrides = {k: v for k, v in {
        "margin": a.margin, "epochs": a.epochs, "i_g": a.ig, "i_f": getattr(a, "if"), "seed": a.seed,
        "batch_size": a.batch_size, "lr_g": a.lr_g, "lr_f": a.lr_f, "distance": a.distance,
        "fake_reduce": a.fake_reduce, "lr_schedule": a.lr_schedule, "ood": a.ood,
    }.items() if v is not None}
    return preset_config(a.preset, **overrides).validate()


def run_advft_cli(victim: str, config: AdvFTConfig, out: Path, data_dir=None, device="auto",
                  preset: str | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """Run (or resume) AdvFT into the folder `out`; returns the final metrics."""
    from .pipeline import RunRecorder, load_victim, new_trainer, resume_trainer

    dev = pick_device(device)
    run = RunDir(out)
    if resume:
        trainer = resume_trainer(run, data_dir, dev)
        recorder = RunRecorder(run, trainer, run.config()["victim"], resumed=True)
    else:
        if (out / "config.json").exists():
            raise CLIError(f"'{out}' already holds a run; use --resume to continue it or choose another --out")
        victim_model, data = load_victim(victim, data_dir, dev)
        trainer = new_trainer(victim_model, data, config, data_dir, dev)
        recorder = RunRecorder(run, trainer, victim, preset=preset)
    cfg = trainer.config
    if not quiet:
        print(f"data: {trainer.data.source}\nOOD: {trainer.ood_source}\ndevice: {describe(dev)}", file=sys.stderr)
    steps_per_epoch = cfg.i_g + cfg.i_f
    bar = _progress(cfg.epochs * steps_per_epoch, "AdvFT") if not quiet else None
    if bar:
        bar.update(trainer.epoch * steps_per_epoch)
    try:
        while not trainer.finished:
            record = trainer.step()
            if bar:
                bar.update(1)
            if record is not None:
                recorder.epoch_done()
                if bar:
                    bar.set_postfix(ep=record["epoch"], acc=f"{record['acc_after']:.4f}",
                                    ood_agree=f"{record['ood_agreement']:.2f}")
    except TrainingDiverged as e:
        recorder.finish("failed", str(e))
        raise CLIError(f"{e} (the last good epoch, {trainer.epoch}, is saved in {out})") from None
    except KeyboardInterrupt:
        recorder.finish("stopped", f"interrupted during epoch {trainer.epoch + 1}; resume with --resume")
        raise
    finally:
        if bar:
            bar.close()
    metrics = recorder.finish("finished")
    summary = {k: metrics[k] for k in ("acc_before", "acc_after", "kl_train", "kl_test", "id_shift", "ood_shift",
                                         "ood_agreement", "seconds", "epochs_done")}
    return summary


def cmd_advft(a) -> int:
    victim = a.victim
    if victim is None:
        from .pipeline import preset_victim

        victim = str(preset_victim(a.preset))
    config = _advft_config(a)
    m = run_advft_cli(victim, config, Path(a.out), a.data_dir, a.device, preset=a.preset, resume=a.resume)
    print(json.dumps(m, indent=2))
    return 0


# ---------------------------------------------------------------- runs


def cmd_runs(a) -> int:
    root = resolve_runs_dir(a.dir)
    runs = list_runs(root)
    if not runs:
        print(f"no runs under '{root}'")
        return 0
    for r in runs:
        cfg, st, hist = r.config(), r.status(), r.history()
        last = hist[-1] if hist else {}
        print(f"{r.name:30s} {st.get('status', '?'):9s} {cfg.get('dataset', '?')}/{cfg.get('arch', '?')} "
              f"m={cfg.get('advft', {}).get('margin')} epoch {last.get('epoch', 0)} "
              f"acc {last.get('acc_after', float('nan')):.4f} ood_agree {last.get('ood_agreement', float('nan')):.2f}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .victim import VictimConfig

    p = argparse.ArgumentParser(prog="python -m core", description="AdvFT: adversarial fine-tuning against model extraction.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train-victim", help="train the original model M_R", description="Train a victim model M_R.")
    t.add_argument("--dataset", required=True, choices=list(DATASETS))
    t.add_argument("--arch", default="lenet2d", choices=list(ARCHS))
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--shift", type=_nonneg_int, default=VictimConfig.shift,
                   help="random translation augmentation in pixels (default %(default)s)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="folder; writes <dataset>_<arch>.pt and .json there")
    _common(t)
    t.set_defaults(func=cmd_train_victim)

    d = AdvFTConfig()
    v = sub.add_parser("advft", help="protect a victim with adversarial fine-tuning",
                       description="Run AdvFT (Algorithm 1) and write a run folder with metrics.json and model.pt.")
    v.add_argument("--victim", help="checkpoint path or committed victim name (default: the preset's victim)")
    v.add_argument("--preset", default="lecture", choices=list(PRESETS), help="defaults for all settings below")
    v.add_argument("--margin", type=_margin, help=f"m (preset lecture: {d.margin})")
    v.add_argument("--epochs", type=_positive_int, help=f"N (lecture: {d.epochs})")
    v.add_argument("--ig", type=_nonneg_int, help=f"generator steps per epoch I_G (lecture: {d.i_g})")
    v.add_argument("--if", type=_positive_int, help=f"model steps per epoch I_F (lecture: {d.i_f})")
    v.add_argument("--batch-size", type=_positive_int)
    v.add_argument("--lr-g", type=float)
    v.add_argument("--lr-f", type=float)
    v.add_argument("--distance", choices=["l2", "l2sq"], help="l2: authors' code; l2sq: the paper's equations")
    v.add_argument("--fake-reduce", choices=["mean", "median"])
    v.add_argument("--lr-schedule", choices=["constant", "cosine"])
    v.add_argument("--ood", choices=list(OOD_SOURCES), help="OOD probe set for plots and OOD metrics")
    v.add_argument("--seed", type=int)
    v.add_argument("--out", required=True, help="run folder to create")
    v.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    _common(v)
    v.set_defaults(func=cmd_advft)

    r = sub.add_parser("runs", help="list run folders", description="List the run folders under a directory.")
    r.add_argument("dir", nargs="?", help="default: $ADVFT_RUNS_DIR, else ./runs")
    r.set_defaults(func=cmd_runs)

    b = sub.add_parser("bench", help="benchmark the lecture preset and the engine overhead",
                       description="Run the benchmark table of the README (needs MNIST and CIFAR-10 in the data dir).")
    b.add_argument("--out", default=None, help="folder for the benchmark's runs (default: a temporary folder)")
    b.add_argument("--seeds", type=_positive_int, default=1, help="seeds of the lecture preset to run")
    _common(b)
    b.set_defaults(func=lambda a: __import__("core.bench", fromlist=["main"]).main(a))

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


# Later modules (attacks, experiments) add their subcommands here.
_EXTRA_COMMANDS: list = [
    lambda sub: __import__("core.experiments", fromlist=["add_commands"]).add_commands(sub),  # attack, table, sweep
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser.parse_args(argv)
    a.argv = argv  # recorded with the victims it trains
    if hasattr(a, "data_dir"):
        a.data_dir = str(resolve_data_dir(a.data_dir))
    try:
        return a.func(a)
    except (CLIError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

