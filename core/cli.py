"""Command line: `python -m core <command> --help`. The only module that knows argparse; nothing else
in core/ imports it.

Every user error (bad value, missing data, unreadable checkpoint, an --out that cannot be written)
ends as one line on stderr and exit status 2, before any work where it can be known before; nothing
half-written is left behind (all files are written atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import knobs
from .advft import AdvFTConfig, MAX_EPOCHS, PRESETS, TrainingDiverged, preset_config
from .attacks import ATTACKS, DEFENCES, LABELS, SAMPLINGS, SURROGATES, AttackConfig, AttackResult, DefenceConfig
from .data import DATASETS, DataError, OOD_SOURCES, resolve_data_dir
from .device import describe, pick_device
from .errors import UserError
from .grid import DEFAULT_THREADS, MAX_THREADS, threaded
from .models import ARCHS, CheckpointError, load_model, save_model
from .runs import RunError, atomic_write_json, list_runs, resolve_runs_dir
from .training import RECORDED_FRAMES, one_line

# A user's mistake ends as one line: the project's own UserError, a value that does not parse, a path
# that does not exist or cannot be written.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, PermissionError)


class CLIError(UserError):
    """A combination of options the command cannot run; the message says which to change."""


# ---------------------------------------------------------------- argument types


def _float_range(low: float, high: float):
    """A float in (low, high]: NaN, infinities and values outside are refused before any work."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text[:40]}'") from None
        if not (low < v <= high):
            raise argparse.ArgumentTypeError(f"must be above {low:g} and at most {high:g} (got {text[:40]})")
        return v
    return parse


def _int_range(low: int, high: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text[:40]}'") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {v})")
        if v > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,} (got {text[:40]})")
        return v
    return parse


_positive_int, _nonneg_int = _int_range(1, 10**10), _int_range(0, 10**10)
_seed = _int_range(0, 2**31 - 1)


def _csv_floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text[:40]}'") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got '{text[:40]}'")
    return vals


def _csv_epochs(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text[:40]}'") from None
    if not vals or min(vals) < 0 or max(vals) > MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"expected integers from 0 to {MAX_EPOCHS}, got '{text[:40]}'")
    return vals


def _csv_seeds(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text[:40]}'") from None
    if not vals or min(vals) < 0 or max(vals) > 2**31 - 1 or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"expected distinct seeds from 0 to 2,147,483,647, got '{text[:40]}'")
    return vals


def _csv_rows(text: str) -> list[str]:
    from .experiments import TABLE_METHODS

    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals or any(v not in TABLE_METHODS for v in vals):
        raise argparse.ArgumentTypeError(f"expected rows from {','.join(TABLE_METHODS)}, got '{text[:40]}'")
    return list(dict.fromkeys(vals))


def _writable_folder(path: str | Path) -> Path:
    """--out checked before any work (nothing is created yet): a folder, or a path whose nearest existing
    parent is a folder we can write in."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' is a file, not a folder; choose another --out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"--out '{out}' cannot be written ('{existing}' is not a writable folder); choose another --out")
    return out


def _progress(total: int, desc: str, unit: str = "step"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                disable=None)  # disable=None: no bar when stderr is not a terminal (CI logs)


def _milestone(bar, line: str) -> None:
    """Where no bar is drawn (stderr is a log file, CI, a notebook), one line per milestone instead, so a
    long run is never silent there; on a terminal the bar's postfix says the same."""
    if bar.disable:
        _note(line)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="datasets folder (default: $ADVFT_DATA_DIR, else ./data)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")


# ---------------------------------------------------------------- train-victim


def cmd_train_victim(a) -> int:
    from .data import load_dataset
    from .victim import VictimConfig, train_victim, victim_name

    out = _writable_folder(a.out)
    device = pick_device(a.device)
    data = load_dataset(a.dataset, a.data_dir)
    print(f"data: {data.source}\ndevice: {describe(device)}", file=sys.stderr)
    cfg = VictimConfig(arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, shift=a.shift, seed=a.seed)
    bar = _progress(a.epochs, f"train {a.dataset}/{a.arch}", "epoch")
    t0 = time.perf_counter()

    def progress(epoch, acc):
        bar.update(1)
        bar.set_postfix(test_acc=f"{acc:.4f}")
        _milestone(bar, f"epoch {epoch} of {a.epochs}: test accuracy {100 * acc:.2f}% "
                        f"({time.perf_counter() - t0:.0f} s)")

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
    chance = 1 / len(data.classes)
    if acc < 2 * chance:
        print(f"warning: the victim is at about chance accuracy ({100 * acc:.1f}%, chance {100 * chance:.0f}%): it "
              f"learned nothing, and AdvFT or an attack on it means nothing. Try a smaller --lr (now {a.lr:g}) or "
              "more --epochs.", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- advft


def advft_config(a) -> AdvFTConfig:
    """The preset's config with every AdvFT knob flag the user gave (core.knobs)."""
    overrides = knobs.overrides(a)
    if getattr(a, "allow_id_transfer", False):
        overrides["allow_id_ood"] = True
    if _scale(a) == "paper":  # the paper's AdvFT settings, with the N of its table for this attack
        from .experiments import scaled_advft

        return scaled_advft(a.preset, "paper", _attack_name(a), **overrides)
    return preset_config(a.preset, **overrides).validate()


def _scale(a) -> str | None:
    """`table` / `sweep`: --scale, else the preset's default scale; None for commands without scales."""
    if not hasattr(a, "scale"):
        return None
    from .experiments import default_scale

    return a.scale or default_scale(a.preset)


def _attack_name(a) -> str:
    """--attack, else the command's default: DFME for Fig. 4 (`sweep --kind epochs`, as in the paper), else
    KnockoffNets."""
    if getattr(a, "attack", None):
        return a.attack
    return "dfme" if getattr(a, "command", None) == "sweep" and getattr(a, "kind", None) == "epochs" else "knockoff"


def cmd_advft(a) -> int:
    from .training import RecordedRun, drive
    from .victims import preset_victim

    out = _writable_folder(a.out)
    device = pick_device(a.device)
    if a.resume:
        run = RecordedRun.resume(out, a.data_dir, device)
    else:
        if (out / "config.json").exists():
            raise CLIError(f"'{out}' already holds a run; use --resume to continue it or choose another --out")
        config = advft_config(a)
        victim = a.victim or str(preset_victim(a.preset))
        run = RecordedRun.create(out, victim, config, a.data_dir, device, preset=a.preset)
    t = run.trainer
    print(f"data: {t.data.source}\nOOD: {t.ood_source}\ndevice: {describe(device)}", file=sys.stderr)
    per_epoch = t.config.i_g + t.config.i_f
    bar = _progress(t.config.epochs * per_epoch, "AdvFT")
    bar.update(t.epoch * per_epoch)

    def on_step(action, record):
        bar.update(1)
        if record is not None:
            bar.set_postfix(ep=record["epoch"], acc=f"{record['acc_after']:.4f}",
                            ood_agree=f"{record['ood_agreement']:.2f}")
            _milestone(bar, f"AdvFT {run.where()}: Acc_MF {100 * record['acc_after']:.2f}%, "
                            f"KL_test {record['kl_test']:.1e}, OOD agreement {100 * record['ood_agreement']:.1f}% "
                            f"({record['seconds']:.0f} s)")

    try:
        drive(run, on_step=on_step)
    except TrainingDiverged as e:
        raise CLIError(f"{e} (the last good epoch, {t.epoch}, is saved in {out}; --resume continues from it)") \
            from None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # out of memory, a disk that fills up...: recorded as failed, said in one line
        if isinstance(e, USER_ERRORS):
            raise
        raise CLIError(f"the run failed: {one_line(e)} (recorded in {out}; --resume continues from the last "
                       "finished epoch)") from None
    finally:
        bar.close()
    m = run.metrics
    print(json.dumps({k: m[k] for k in ("acc_before", "acc_after", "kl_train", "kl_test", "id_shift", "ood_shift",
                                         "ood_agreement", "seconds", "epochs_done")}, indent=2))
    return 0


# ---------------------------------------------------------------- runs


def cmd_runs(a) -> int:
    root = resolve_runs_dir(a.dir)
    runs = list_runs(root)
    if not runs:
        print(f"no runs under '{root}'")
        return 0

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in runs:
        s = r.summary()
        line = (f"{s.name:30s} {s.status:11s} {s.dataset}/{s.arch} m={num(s.margin, 'g')} "
                f"epoch {s.epoch}/{num(s.epochs, 'd')} acc {num(s.acc_after, '.4f')} "
                f"ood_agree {num(s.ood_agreement, '.2f')}")
        print(line + (f"  [{s.problem}]" if s.problem else ""))
    return 0


# ---------------------------------------------------------------- attack, table, sweep


def attack_config(a, name: str | None = None) -> AttackConfig:
    """AttackConfig's defaults, then the --scale's budgets (table and sweep), then every option given. With
    `name` (sweep --also), that attack with every option but --queries: its budget is the scale's."""
    from .experiments import scaled_attack

    options = {"labels": "labels", "queries": "queries", "surrogate": "surrogate", "seed": "seed",
               "sampling": "sampling", "transfer": "transfer", "rounds": "rounds", "evals": "evals",
               "eval_size": "eval_size", "epochs": "train_epochs", "patience": "patience"}
    if name is not None:
        del options["queries"]
    explicit = {k: getattr(a, opt) for k, opt in options.items() if getattr(a, opt, None) is not None}
    explicit["allow_id_transfer"] = bool(getattr(a, "allow_id_transfer", False))
    return scaled_attack(name or _attack_name(a), _scale(a) or "toy", **explicit)


def cmd_attack(a) -> int:
    from .attacks import check_transfer, run_attack
    from .training import load_victim

    out = _writable_folder(a.out)
    device = pick_device(a.device)
    config = attack_config(a)
    defence = DefenceConfig(name=a.defence, seed=a.seed).validate()
    target, data = load_victim(a.target, a.data_dir, device)
    print(f"target: {a.target} ({target.arch} on {data.name}); data: {data.source}; device: {describe(device)}",
          file=sys.stderr)
    if check_transfer(config, data, a.data_dir):
        _note(f"warning: the transfer set '{config.transfer}' is the victim's own distribution (--allow-id-transfer)")
    bar = _progress(config.queries, f"{config.attack} vs {defence.name}", "query")

    def progress(r: AttackResult):
        bar.update(r.queries - bar.n)
        if r.surrogate_acc is not None:
            bar.set_postfix(phase=r.phase, acc=f"{r.surrogate_acc:.4f}")

    try:
        result = run_attack(target, data, config, defence, a.data_dir, progress=progress)
    finally:
        bar.close()
    if result.transfer_source:
        print(f"transfer set: {result.transfer_source}", file=sys.stderr)
    # The numbers first: if the files cannot be written (a full disk), the work is not lost with them.
    print(json.dumps({k: getattr(result, k) for k in ("surrogate_acc", "surrogate_best_acc", "agreement", "queries",
                                                       "target_acc", "epochs_trained", "early_stopped", "id_transfer",
                                                       "seconds", "status")}, indent=2), flush=True)
    try:
        atomic_write_json(out / "result.json", {**result.to_dict(), "target": str(a.target), "device": describe(device)})
        save_model(result.surrogate.cpu(), out / "surrogate.pt", attack=config.attack, target=str(a.target),
                   test_accuracy=result.surrogate_acc)
    except OSError as e:
        raise CLIError(f"the attack finished (its result is printed above) but {out} cannot be written: "
                       f"{e.strerror or e}") from None
    return 0


def _portable(path: str | None) -> str | None:
    """A committed victim's name as it is; any other path made absolute, so cells running elsewhere
    (a Ray worker's folder, another node with the same checkout) read the same file."""
    from .victims import committed_victims, registry

    if path is None or path in committed_victims() or path in registry():  # a known name stays a name
        return path
    return str(Path(path).resolve())


def _experiment_setup(a):
    """(out, device, attack config, victim name, victim, its data, executor) for `table` and `sweep`.

    The victim and its data are checked here, before any cell runs, so a bad --victim is one line and
    exit status 2. With --executor ray the cells run on the workers' devices: this check runs on this
    machine's CPU, which may have no GPU."""
    from .attacks import check_transfer
    from .grid import LocalExecutor, make_executor
    from .training import load_victim

    out = _writable_folder(a.out)
    if a.executor == "ray":
        if a.device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise CLIError(f"--device with --executor ray: auto, cpu or cuda (got '{a.device[:40]}')")
        device = pick_device("cpu")
    else:
        device = pick_device(a.device)
    executor = make_executor(a.executor, a.ray_address)  # a missing Ray is said here, before any work
    attack = attack_config(a)
    if attack.transfer.endswith(".npz"):
        attack = replace(attack, transfer=str(Path(attack.transfer).resolve()))
    victim_name = _portable(a.victim or PRESETS[a.preset]["victim"])
    victim, data = load_victim(victim_name, a.data_dir, device)
    if check_transfer(attack, data, a.data_dir):  # refused (one line, exit 2) unless --allow-id-transfer
        _note(f"warning: the transfer set '{attack.transfer}' is the victim's own distribution (--allow-id-transfer)")
    if isinstance(executor, LocalExecutor):
        executor.victims[victim_name] = (victim, data)  # loaded once, for every cell
    return out, device, attack, victim_name, victim, data, executor


def _run_cells(a, cells, out, device, executor):
    """The grid with a progress bar of cells (done / running / failed of total, time left) on stderr."""
    from tqdm import tqdm

    from .experiments import run_cell
    from .grid import run_grid

    bar = _progress(len(cells), f"{a.command} cells", "cell")
    cells = threaded(cells, a.threads)

    def note(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def progress(p) -> None:
        if p.skipped and not bar.disable and not bar.n:  # cells done by an earlier run do not count towards the rate
            bar.initial = bar.n = p.skipped
        bar.update(p.done + p.failed - bar.n)
        bar.set_postfix(running=p.running, failed=p.failed)

    try:
        result = run_grid(cells, out, run_cell, executor, data_dir=a.data_dir,
                          device=device if a.executor == "local" else a.device, retries=a.retries, note=note,
                          progress=progress)
    finally:
        bar.close()
    if result.failed:
        _note(f"{len(result.failed)} of {len(cells)} cells failed ({', '.join(result.failed)}); their rows say why. "
              f"Run the same command again to retry only them.")
    return result


def _where(a, device, result) -> str:
    if a.executor == "local":
        return describe(device)
    devices = sorted({r["device"] for r in result.records.values() if r.get("device")})
    return f"Ray ({', '.join(devices) or 'no cell ran'})"


def cmd_table(a) -> int:
    from . import figures
    from .experiments import (PAPER_TABLES, TABLE_METHODS, plottable, protected_path, table_cells, table_html,
                              table_markdown, table_report, write_experiment)
    from .training import check_ood

    out, device, attack, victim_name, victim, data, executor = _experiment_setup(a)
    methods = tuple(a.rows) if a.rows else TABLE_METHODS
    protected = None
    if a.protected:
        for seed in a.seeds or [a.seed]:  # each seed's model, when the path names {seed}
            path = protected_path(a.protected, seed)
            model = load_model(path, "cpu")
            if (model.arch, model.dataset) != (victim.arch, victim.dataset):
                raise CheckpointError(f"'{path}' is a {model.arch} on {model.dataset}, "
                                      f"the victim a {victim.arch} on {victim.dataset}")
        protected = _portable(a.protected)
    advft = None if protected or "advft" not in methods else advft_config(a)
    if advft is not None:
        check_ood(advft, data)
    cells = table_cells(victim_name, attack, advft, protected, None, methods, a.seeds, a.seed_rows)
    t0 = time.perf_counter()
    result = _run_cells(a, cells, out, device, executor)
    report = table_report(cells, result, methods, dataset=data.name, victim_arch=victim.arch)
    report.update({"victim": victim_name, "protected": a.protected, "scale": _scale(a), "device": _where(a, device, result),
                   "executor": a.executor, "threads": a.threads, "seconds": round(time.perf_counter() - t0, 1),
                   "command": "python -m core " + " ".join(shlex.quote(x) for x in a.argv)})
    layout = PAPER_TABLES[attack.attack]["table"]
    title = (f"{layout} layout: {attack.attack} against AdvFT / DP / AM (simplified) / none, "
             f"{data.name} {victim.arch} victim ({victim_name})")
    markdown = table_markdown(report, title)
    figure = figures.table_figure(plottable(report))
    for line in write_experiment(out, "table", report, figure, markdown, table_html(report, figure, title)):
        _note(line)
    print(markdown)
    return 1 if result.failed else 0


def cmd_sweep(a) -> int:
    from . import figures
    from .experiments import epoch_cells, epoch_report, margin_cells, margin_report, plottable, write_experiment

    from .training import check_ood

    if a.also == _attack_name(a):
        raise CLIError(f"--also {a.also}: the sweep's attack is already {a.also}; --also adds the other one")
    out, device, attack, victim_name, victim, data, executor = _experiment_setup(a)
    advft = advft_config(a)
    check_ood(advft, data)
    also = (attack_config(a, a.also),) if a.also else ()
    if a.kind == "epochs":
        cells = epoch_cells(victim_name, advft, attack, a.at, also)
    else:
        cells = margin_cells(victim_name, advft, attack, a.margins, also=also)
    t0 = time.perf_counter()
    result = _run_cells(a, cells, out, device, executor)
    if a.kind == "epochs":
        report = epoch_report(cells, result, advft, attack, data.name)
    else:
        report = margin_report(cells, result, advft, attack, data.name)
    report.update({"victim": victim_name, "scale": _scale(a), "device": _where(a, device, result),
                   "executor": a.executor, "threads": a.threads, "seconds": round(time.perf_counter() - t0, 1)})
    name = f"sweep_{a.kind}"
    figure = figures.sweep_figure(plottable(report), "epoch" if a.kind == "epochs" else "margin")
    for line in write_experiment(out, name, report, figure):
        _note(line)
    for r in report["rows"]:
        print(json.dumps(r))
    return 1 if result.failed else 0


def cmd_atlas(a) -> int:
    from .atlas import TOY_DFME, atlas_cells, write_bundle

    out, device, attack, victim_name, victim, data, executor = _experiment_setup(a)
    cells = atlas_cells(victim_name, preset_config(a.preset, seed=a.seed), attack, a.margins, a.at,
                        {**TOY_DFME, "queries": a.dfme_queries} if a.dfme_queries else None)
    bundle = _writable_folder(a.bundle) if a.bundle else out / "atlas"
    t0 = time.perf_counter()
    if a.bundle_only:  # the cells done so far (a grid still running elsewhere, or stopped): nothing runs
        from .grid import GridResult, load_records

        result = GridResult(out, load_records(threaded(cells, a.threads), out))
    else:
        result = _run_cells(a, cells, out, device, executor)
    command = "python -m core " + " ".join(shlex.quote(x) for x in a.argv)
    seconds = time.perf_counter() - t0
    if a.bundle_only:  # the bundle says how its cells were made, and how long they took
        command = command.replace(" --bundle-only", "")
        seconds = sum(r.get("seconds") or 0 for r in result.records.values())
    write_bundle(cells, result, out, bundle, victim_name, command, seconds)
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    done = sum(r["status"] == "done" for r in result.records.values())
    print(f"{bundle}: {done} of {len(cells)} cells, {size / 1e6:.2f} MB; "
          f"{time.perf_counter() - t0:.0f} s ({_where(a, device, result)})")
    return 1 if result.failed else 0


def cmd_record(a) -> int:
    """Run a preset into a temporary folder, then keep a compact copy of it (core.training.record)."""
    import tempfile

    from .training import record, run_advft

    out = _writable_folder(a.out)
    device = pick_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = run_advft(Path(tmp) / a.preset, PRESETS[a.preset]["victim"], preset_config(a.preset, seed=a.seed),
                        a.data_dir, device, preset=a.preset)
        seconds = time.perf_counter() - t0
        if run.status != "finished":
            raise CLIError(f"the {a.preset} run did not finish ({run.status})")
        command = "python -m core " + " ".join(shlex.quote(x) for x in a.argv)
        dest = record(run.run, out / f"recorded-{a.preset}", command)
    size = sum(p.stat().st_size for p in dest.path.rglob("*") if p.is_file())
    print(f"{dest.path}: {len(dest.frame_steps())} frames, {size / 1e6:.2f} MB; training took {seconds:.0f} s")
    return 0


def cmd_animate(a) -> int:
    """A run's Fig. 5 panels over its frames as an animated GIF, MP4 or WebM (core.animate)."""
    from .animate import AnimationSpec, animate, format_of, parse_panels
    from .runs import RunDir, atomic_write_bytes
    from .training import recorded_runs, run_by_name

    out = Path(a.out)
    fmt = format_of(out)  # before any work: the format follows the suffix
    _writable_folder(out.parent if str(out.parent) else ".")
    spec = AnimationSpec(fps=a.fps, width=a.width, panels=parse_panels(a.panels), style=a.style, max_frames=a.frames,
                         hold_s=a.hold).validate()
    run = RunDir(a.run) if (Path(a.run) / "config.json").is_file() else run_by_name(a.run, resolve_runs_dir(a.runs_dir))
    if not run.exists():
        raise CLIError(f"no run '{a.run}': give a run folder, a run name under '{resolve_runs_dir(a.runs_dir)}', or a "
                       f"recording ({', '.join(r.name for r in recorded_runs())})")
    anim = animate(run, fmt, spec)
    atomic_write_bytes(out, anim.data)
    print(f"{out}: {anim.frames} frames, {anim.size[0]}x{anim.size[1]} px, {len(anim.data) / 1e6:.2f} MB, "
          f"{spec.fps:g} frames/s; made in {anim.seconds:.1f} s")
    return 0


def cmd_bench(a) -> int:
    from .bench import main as bench_main

    return bench_main(a.out, a.seeds, a.data_dir, a.device)


# ---------------------------------------------------------------- parser


def _attack_args(p: argparse.ArgumentParser, target_flag: str) -> None:
    d = AttackConfig()
    if target_flag == "--target":
        p.add_argument("--target", required=True, help="checkpoint to attack (a victim, or an AdvFT run's model.pt), "
                                                      "or a committed victim name such as mnist_lenet2d")
    else:
        p.add_argument("--victim", help="M_R: checkpoint path or committed victim name (default: the preset's victim)")
    p.add_argument("--attack", choices=list(ATTACKS),
                   help="default: dfme for `sweep --kind epochs` (the paper's Fig. 4), else knockoff")
    p.add_argument("--labels", default=d.labels, choices=list(LABELS), help="what the thief asks the API for")
    p.add_argument("--queries", type=_positive_int,
                   help=f"query budget Q (default: the --scale's for table and sweep, else {d.queries})")
    p.add_argument("--surrogate", default=d.surrogate, choices=list(SURROGATES),
                   help="full: the victim arch's full-width counterpart (strong attacker); same: the victim's arch")
    p.add_argument("--sampling", default=d.sampling, choices=list(SAMPLINGS), help="KnockoffNets' query policy")
    p.add_argument("--transfer", default=d.transfer,
                   help="KnockoffNets' transfer set: cifar10 (offline crops when absent), natural, or an .npz path")
    p.add_argument("--rounds", type=_int_range(1, 1000), default=d.rounds,
                   help=f"KnockoffNets' query/train rounds = its accuracy-vs-queries points (default {d.rounds}: "
                        "query the whole budget, then train)")
    p.add_argument("--evals", type=_int_range(1, 1000), default=d.evals,
                   help=f"DFME's points on the accuracy-vs-queries curve (default {d.evals})")
    p.add_argument("--eval-size", type=_int_range(10, 10**7), default=d.eval_size,
                   help=f"ID test images the surrogate is scored on (default {d.eval_size})")
    p.add_argument("--train-epochs", type=_int_range(1, 10_000),
                   help=f"KnockoffNets: passes over the transfer set (the most, with --patience; default {d.epochs})")
    p.add_argument("--patience", type=_int_range(0, 10_000),
                   help="KnockoffNets: score the surrogate after every pass and stop once this many passes in a row "
                        "have not improved its best accuracy (0: train every pass; default 0, or the --scale's)")
    p.add_argument("--allow-id-transfer", action="store_true",
                   help="allow a transfer set (or AdvFT OOD source) that is the victim's own training distribution; "
                        "refused otherwise, and recorded in the result when allowed")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True, help="folder for the results")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    from .experiments import SCALES, TABLE_METHODS
    from .victim import VictimConfig

    p = argparse.ArgumentParser(prog="python -m core", description="AdvFT: adversarial fine-tuning against model extraction.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train-victim", help="train the original model M_R", description="Train a victim model M_R.")
    t.add_argument("--dataset", required=True, choices=list(DATASETS))
    t.add_argument("--arch", default="lenet2d", choices=list(ARCHS))
    t.add_argument("--epochs", type=_int_range(1, 1000), default=10)
    t.add_argument("--batch-size", type=_int_range(1, 8192), default=128)
    t.add_argument("--lr", type=_float_range(0, 1), default=3e-3,
                   help="Adam's learning rate (default %(default)s; above ~0.01 a LeNet rarely learns)")
    t.add_argument("--shift", type=_int_range(0, 8), default=VictimConfig.shift,
                   help="random translation augmentation in pixels (default %(default)s)")
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--out", required=True, help="folder; writes <dataset>_<arch>.pt and .json there")
    _common(t)
    t.set_defaults(func=cmd_train_victim)

    v = sub.add_parser("advft", help="protect a victim with adversarial fine-tuning",
                       description="Run AdvFT (Algorithm 1) and write a run folder with metrics.json and model.pt.")
    v.add_argument("--victim", help="checkpoint path or committed victim name (default: the preset's victim)")
    v.add_argument("--preset", default="lecture", choices=list(PRESETS), help="defaults for all settings below")
    knobs.add_flags(v, skip=("allow_id_ood",))
    v.add_argument("--allow-id-transfer", action="store_true",
                   help="allow an --ood source that is the victim's own training distribution (refused otherwise)")
    v.add_argument("--out", required=True, help="run folder to create")
    v.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    _common(v)
    v.set_defaults(func=cmd_advft)

    r = sub.add_parser("runs", help="list run folders", description="List the run folders under a directory.")
    r.add_argument("dir", nargs="?", help="default: $ADVFT_RUNS_DIR, else ./runs")
    r.set_defaults(func=cmd_runs)

    rec = sub.add_parser("record", help="record a preset's run for the app to open instantly",
                         description="Run a preset and keep a compact copy (config, metrics, model, epoch "
                                     f"snapshots, {RECORDED_FRAMES} compact frames) in OUT/recorded-<preset>.")
    rec.add_argument("--preset", default="lecture", choices=list(PRESETS))
    rec.add_argument("--seed", type=_seed, default=0)
    rec.add_argument("--out", default="assets/recorded", help="folder of the recordings (default %(default)s)")
    _common(rec)
    rec.set_defaults(func=cmd_record)

    from .animate import PANELS, AnimationSpec
    d = AnimationSpec()
    an = sub.add_parser("animate", help="export a run's Fig. 5 panels as an animated GIF, MP4 or WebM",
                        description="Draw the Fig. 5 panels of every saved frame of a run (live, finished or recorded) "
                                    "on fixed axes and write them as an animation; the format follows --out's suffix "
                                    "(.gif always works; .mp4 and .webm need pip install -r requirements-video.txt).")
    an.add_argument("run", help="a run folder, a run name under the runs dir, or a recording such as recorded-lecture")
    an.add_argument("--out", required=True, help="file to write: NAME.gif, NAME.mp4 or NAME.webm")
    an.add_argument("--fps", type=float, default=d.fps, help="frames per second (default %(default)s)")
    an.add_argument("--width", type=_int_range(320, 3840), default=d.width, help="width in pixels (default %(default)s)")
    an.add_argument("--panels", default=",".join(d.panels),
                    help=f"panels in order, from {','.join(PANELS)}: M_R, M_F, M_F's zoom on the OOD start "
                         "(default %(default)s)")
    an.add_argument("--style", default=d.style, choices=["presentation", "screen"],
                    help="the app's presentation style (large fonts, for slides) or its screen style (default %(default)s)")
    an.add_argument("--frames", type=_int_range(2, 1000), default=d.max_frames,
                    help="at most this many of the run's frames, evenly spaced, first and last kept (default %(default)s)")
    an.add_argument("--hold", type=float, default=d.hold_s, help="seconds the last frame stays (default %(default)s)")
    an.add_argument("--runs-dir", help="where run names are looked up (default: $ADVFT_RUNS_DIR, else ./runs)")
    an.set_defaults(func=cmd_animate)

    b = sub.add_parser("bench", help="benchmark the lecture preset and the engine overhead",
                       description="Run the benchmark table of the README (needs MNIST and CIFAR-10 in the data dir).")
    b.add_argument("--out", default=None, help="folder for the benchmark's runs (default: a temporary folder)")
    b.add_argument("--seeds", type=_int_range(1, 100), default=1, help="seeds of the lecture preset to run")
    _common(b)
    b.set_defaults(func=cmd_bench)

    k = sub.add_parser("attack", help="steal a model through its black-box API",
                       description="Run KnockoffNets or DFME against a model behind a (defended) API; "
                                   "writes OUT/result.json and OUT/surrogate.pt.")
    _attack_args(k, "--target")
    k.add_argument("--defence", default="none", choices=list(DEFENCES),
                   help="API poisoning: none, dp (deceptive perturbation), am (adaptive misinformation, simplified: "
                        "see the README's Baselines), top1")
    k.set_defaults(func=cmd_attack)

    for name, helptext in (("table", "the paper's Table 2/3: AdvFT vs DP vs AM vs none under one attack"),
                           ("sweep", "Fig. 4 (surrogate accuracy vs AdvFT epochs) or a margin sweep")):
        writes = ("; writes CSV, JSON, Markdown and HTML (the table in the paper's layout with the paper's numbers "
                  "beside ours, its notes, a figure)." if name == "table" else "; writes CSV, JSON and an HTML figure.")
        e = sub.add_parser(name, help=helptext, description=helptext + writes)
        _attack_args(e, "--victim")
        e.add_argument("--preset", default="lecture", choices=list(PRESETS),
                       help="the victim and AdvFT settings (table-mnist: the paper's MNIST LeNet on a CPU)")
        e.add_argument("--scale", choices=list(SCALES),
                       help="budgets: toy (KnockoffNets 20k queries, DFME 200k), cpu (KnockoffNets 50k until it stops "
                            "improving, DFME 1M), paper (the paper's: KnockoffNets 50k for up to 100 passes, DFME 6M, "
                            "the paper preset's AdvFT with N = 75 / 6; for a GPU). Default: cpu for table-mnist, "
                            "paper for paper, else toy")
        knobs.add_flags(e, skip=("seed", "allow_id_ood"))  # --seed and --allow-id-transfer: the attack's options
        if name == "table":
            e.add_argument("--protected", help="an existing protected model.pt for the AdvFT row (skips running AdvFT); "
                                               "with --seeds, a path with {seed} in it names each seed's model "
                                               "(e.g. runs/tm/s{seed}/model.pt)")
            e.add_argument("--rows", type=_csv_rows, help=f"rows to run (default all: {','.join(TABLE_METHODS)})")
            e.add_argument("--seeds", type=_csv_seeds,
                           help="run the rows once per seed (e.g. 0,1,2) and report each row's median (default: --seed)")
            e.add_argument("--seed-rows", type=_csv_rows,
                           help="with --seeds: the rows that run every seed, e.g. advft,none (the others: the first "
                                "seed only; default all)")
            e.set_defaults(func=cmd_table)
        else:
            e.add_argument("--kind", default="epochs", choices=["epochs", "margin"])
            e.add_argument("--at", type=_csv_epochs, help="epochs to attack after, e.g. 0,1,2,4,6 (default: every epoch)")
            e.add_argument("--margins", type=_csv_floats, default=[1.0, 3.0, 10.0, 30.0], help="margins for --kind margin")
            e.add_argument("--also", choices=["knockoff", "dfme"],
                           help="attack every point with this thief too, after --attack, at the --scale's budget for it "
                                "with the other options above (e.g. Fig. 4's DFME and a KnockoffNets thief from one "
                                "AdvFT run)")
            e.set_defaults(func=cmd_sweep)
        _grid_args(e)

    from .atlas import EPOCHS, MARGINS, TOY_DFME
    at = sub.add_parser("atlas", help="the margin x epochs atlas: a grid of AdvFT runs, attacked, for the app",
                        description="AdvFT runs of one victim for each margin, attacked after each chosen epoch N by "
                                    "the strong thief (the attack options below; default KnockoffNets, 20k soft "
                                    "queries) and a toy DFME; writes the grid in OUT and the app's bundle "
                                    "(atlas.json + snapshots.pt) in OUT/atlas or --bundle.")
    _attack_args(at, "--victim")
    at.add_argument("--preset", default="lecture", choices=list(PRESETS), help="AdvFT settings besides m and N")
    at.add_argument("--margins", type=_csv_floats, default=list(MARGINS),
                    help=f"margins m (default {','.join(f'{m:g}' for m in MARGINS)})")
    at.add_argument("--at", type=_csv_epochs, default=list(EPOCHS),
                    help=f"epochs N to attack after (default {','.join(map(str, EPOCHS))}; 0 = unprotected)")
    at.add_argument("--dfme-queries", type=_nonneg_int, default=TOY_DFME["queries"],
                    help="budget of the toy DFME run at every point (default %(default)s, about 15 s on a 2-core CPU; "
                         "0 leaves it out)")
    at.add_argument("--bundle", help="folder for the app's bundle (default OUT/atlas); the shipped one is "
                                     "assets/atlas/<victim>")
    at.add_argument("--bundle-only", action="store_true",
                    help="only write the bundle from the cells already done in OUT (a partial atlas opens too)")
    _grid_args(at)
    at.set_defaults(func=cmd_atlas)
    return p


def _grid_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: the cells one after another in this process (default); ray: each cell a "
                        "task on a Ray cluster (pip install -r requirements-ray.txt)")
    e.add_argument("--ray-address", help="with --executor ray: auto (the cluster `ray start` made this machine "
                                         "part of), ray://HOST:10001 (Ray Client), or omitted: a local cluster")
    e.add_argument("--retries", type=_int_range(0, 10), default=1,
                   help="times a failed cell is run again before it is recorded failed (default %(default)s)")
    e.add_argument("--threads", type=_int_range(1, MAX_THREADS), default=DEFAULT_THREADS,
                   help="torch threads per cell on either executor (a Ray cell asks for as many CPUs); part of a "
                        "cell's settings, since float results depend on it (default %(default)s)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a KeyboardInterrupt): a run in progress records 'stopped' with where it
    was, a grid stops its cells, instead of the process dying mid-write."""


_SIGTERM_SEEN = threading.Event()  # a library may turn Terminated into a plain KeyboardInterrupt (Ray's wait does)


def _terminated(signum, frame) -> None:
    _SIGTERM_SEEN.set()
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser.parse_args(argv)
    a.argv = argv  # recorded with the victims it trains
    if hasattr(a, "data_dir"):
        a.data_dir = str(resolve_data_dir(a.data_dir))
    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    _SIGTERM_SEEN.clear()
    try:
        return a.func(a)
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
        if _SIGTERM_SEEN.is_set():
            print("terminated (SIGTERM); a run records where it stopped and --resume continues it", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine, not the command: a full disk, a read-only folder, a vanished file
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or one_line(e)}{where}; free some space or choose another --out", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a smaller --batch-size or budget", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
