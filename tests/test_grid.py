"""The grid runner (core.grid): the same rows from the local executor and from Ray, failed cells retried
then recorded, reruns that run only what is not done, and a default path that never imports Ray."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from core.cli import main
from core.experiments import margin_cells, margin_report, plottable, run_cell, write_experiment
from core.figures import sweep_figure
from core.grid import DEFAULT_THREADS, Cell, GridError, LocalExecutor, run_grid
from tests.conftest import MNIST_VICTIM, ROOT, tiny_config
from tests.test_experiments import TINY_ATTACK

MARGINS, SEEDS = [5.0], [0, 1]  # two cells that differ only by their seed: the rows must differ too


def without_times(value):
    """Rows as compared across executors: everything but wall-clock fields."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def run_or_die(cell, folder, **kw):
    """run_cell, except that the cell named 'dies' kills its worker process (as a crash or an OOM kill would)."""
    if cell.name == "dies":
        os._exit(3)
    return run_cell(cell, folder, **kw)


@pytest.mark.ray
def test_local_and_ray_give_the_same_rows_and_run_folders(small_data_dir, tmp_path):
    """The same cells give the same rows and models on either executor, each cell on its own thread count
    (Ray used to run every cell on one thread: 46.36% against 41.96% for a 2-thread local cell); a cell
    that raises or kills its worker is retried, then recorded as failed."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -r requirements-ray.txt")
    from core.grid import RayExecutor

    cells = margin_cells(str(MNIST_VICTIM), tiny_config(), TINY_ATTACK, MARGINS, SEEDS)
    assert [c.name for c in cells] == ["m5-s0", "m5-s1"] and {c.threads for c in cells} == {DEFAULT_THREADS}
    local = run_grid(cells, tmp_path / "local", run_cell, data_dir=small_data_dir)
    assert list(local.records) == [c.name for c in cells] and not local.failed

    broken = Cell("broken", str(tmp_path / "missing.pt"), cells[0].attack, threads=1)  # raises in the worker, twice
    dies = Cell("dies", str(MNIST_VICTIM), cells[0].attack, threads=1)                  # kills its worker, twice
    from ray import cloudpickle  # run_or_die travels by value: workers cannot import a test module

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        remote = run_grid([*cells, broken, dies], tmp_path / "ray", run_or_die, RayExecutor(num_cpus=2),
                          data_dir=small_data_dir, retries=1)
    except GridError as e:
        if "could not start or reach Ray" in str(e):
            pytest.skip(f"Ray cannot start here: {e}")
        raise
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert remote.failed == ["broken", "dies"] and remote.records["broken"]["attempts"] == 2
    assert "no checkpoint" in remote.records["broken"]["message"]
    assert remote.records["dies"]["attempts"] == 2 and "did not return" in remote.records["dies"]["message"]

    for name in local.records:
        assert without_times(remote.row(name)) == without_times(local.row(name)), name
        assert remote.records[name]["device"] == local.records[name]["device"]
        assert remote.records[name]["device"] == f"CPU ({DEFAULT_THREADS} threads)"
        # the run folders came back from the workers, complete, under --out
        mine, theirs = (torch.load(tmp_path / side / name / "model.pt", weights_only=True)["state_dict"]
                        for side in ("local", "ray"))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert json.loads((tmp_path / "ray" / name / "status.json").read_text())["status"] == "finished"
    assert not (tmp_path / "ray" / "broken").exists() and not (tmp_path / "ray" / ".staging").exists()

    rows = margin_report(cells, local, tiny_config(), TINY_ATTACK, "mnist", SEEDS)["rows"]
    assert [(r["margin"], r["seed"]) for r in rows] == [(5.0, 0), (5.0, 1)]
    assert without_times(rows) == without_times(margin_report(cells, remote, tiny_config(), TINY_ATTACK, "mnist",
                                                              SEEDS)["rows"])
    assert rows[0]["kl_test"] != rows[1]["kl_test"]  # the seeds really differ


@pytest.mark.slow
def test_a_failed_cell_is_retried_recorded_and_rerun_alone(small_data_dir, tmp_path):
    late = tmp_path / "late.pt"  # the victim of one cell does not exist yet
    advft = margin_cells(str(MNIST_VICTIM), tiny_config(), TINY_ATTACK, [5.0])[0]
    failing = margin_cells(str(late), tiny_config(), TINY_ATTACK, [20.0])[0]
    cells = [failing, advft, Cell("before", str(MNIST_VICTIM), advft.attack)]
    calls, states, notes = [], [], []

    def counting(cell, folder, **kw):
        calls.append(cell.name)
        return run_cell(cell, folder, **kw)

    out = tmp_path / "grid"
    first = run_grid(cells, out, counting, data_dir=small_data_dir, retries=1, note=notes.append,
                     progress=lambda p: states.append((p.done, p.running, p.failed, p.total)))
    assert calls == ["m20", "m5", "before", "m20"]  # retried once, after the others
    assert first.failed == ["m20"] and first.row("m5") and first.row("before")
    record = json.loads((out / "cells" / "m20.json").read_text())
    assert record["status"] == "failed" and record["attempts"] == 2 and "no checkpoint" in record["message"]
    assert states[-1] == (2, 0, 1, 3) and any("trying again" in n for n in notes)
    assert (out / "m5" / "model.pt").is_file() and not (out / "m20").exists()
    # the sweep's report: a failed row with its message, left out of the figure
    report = margin_report([advft, failing], first, tiny_config(), TINY_ATTACK, "mnist")
    assert [r["status"] for r in report["rows"]] == ["finished", "failed"]
    assert report["rows"][1]["surrogate_acc"] is None and "no checkpoint" in report["rows"][1]["message"]
    assert report["cells"]["m20"]["attempts"] == 2
    write_experiment(out, "sweep_margin", report, sweep_figure(plottable(report), "margin"))
    assert (out / "sweep_margin.csv").read_text().splitlines()[0].endswith("attack_seconds,status,message")
    model_time = (out / "m5" / "model.pt").stat().st_mtime_ns

    shutil.copy(MNIST_VICTIM, late)  # fixed: the same command again runs only the failed cell
    calls.clear()
    second = run_grid(cells, out, counting, data_dir=small_data_dir, progress=lambda p: states.append(p))
    assert calls == ["m20"] and second.skipped == ["m5", "before"] and not second.failed
    assert list(second.records) == ["m20", "m5", "before"] and second.row("m20")["n"] == 1
    assert (out / "m20" / "model.pt").is_file()
    assert states[-1].done == 3 and states[-1].skipped == 2
    assert (out / "m5" / "model.pt").stat().st_mtime_ns == model_time

    # results of other settings, or a folder no finished cell recorded, are refused before any work
    other = Cell("m5", str(MNIST_VICTIM), {**advft.attack, "queries": 500}, advft=advft.advft)
    with pytest.raises(GridError, match=r"other settings \(attack.queries differs\)"):
        run_grid([other], out, counting)
    (out / "m9").mkdir()
    stranger = Cell("m9", str(MNIST_VICTIM), advft.attack, advft=advft.advft)
    with pytest.raises(GridError, match="no finished cell of this grid recorded"):
        run_grid([stranger], out, counting)
    with pytest.raises(GridError, match="two cells are named 'm20'"):
        run_grid([failing, failing], out, counting)
    assert calls == ["m20"]


def test_a_foreign_writer_in_the_grid_folder_stops_it_and_is_never_adopted(small_data_dir, tmp_path):
    """Another process writes a run where a cell's folder goes while that cell trains: the grid stops with
    a message, leaves that folder alone, records nothing for the cell, and a rerun refuses to adopt it."""
    cell = margin_cells(str(MNIST_VICTIM), tiny_config(), TINY_ATTACK, [5.0])[0]
    out = tmp_path / "grid"

    def meanwhile(c, folder, **kw):
        row = run_cell(c, folder, **kw)
        foreign = out / c.name
        foreign.mkdir()
        (foreign / "config.json").write_text(json.dumps({"advft": {**c.advft, "margin": 30.0}}))
        return row

    with pytest.raises(GridError, match="appeared while cell 'm5' ran"):
        run_grid([cell], out, meanwhile, data_dir=small_data_dir, retries=0)
    assert not (out / "cells" / "m5.json").exists()
    assert json.loads((out / "m5" / "config.json").read_text())["advft"]["margin"] == 30.0
    assert not (out / "m5" / "model.pt").exists()
    with pytest.raises(GridError, match="no finished cell of this grid recorded"):
        run_grid([cell], out, run_cell, data_dir=small_data_dir)

    # a done record beside a folder of other settings (the folder swapped after the grid finished)
    fresh = tmp_path / "fresh"
    run_grid([cell], fresh, run_cell, data_dir=small_data_dir)
    config = json.loads((fresh / "m5" / "config.json").read_text())
    config["advft"]["margin"] = 30.0
    (fresh / "m5" / "config.json").write_text(json.dumps(config))
    with pytest.raises(GridError, match="not cell 'm5'"):
        run_grid([cell], fresh, run_cell, data_dir=small_data_dir)


@pytest.mark.slow
def test_the_cli_resumes_and_never_imports_ray(small_data_dir, tmp_path):
    """`sweep` twice with the same --out: the second run skips the finished cell and writes the same CSV;
    the default executor never imports Ray."""
    out = tmp_path / "fig4"
    script = ("import sys; from core.cli import main; code = main(sys.argv[1:]); "
              "assert 'ray' not in sys.modules, 'the local executor imported ray'; sys.exit(code)")
    args = ["sweep", "--kind", "epochs", "--at", "0", "--attack", "knockoff", "--queries", "300", "--eval-size", "500",
            "--data-dir", small_data_dir, "--out", out]
    runs = [subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert "cell before: done" in runs[0].stderr and "1 of 1 cells already done" in runs[1].stderr
    assert "cell before: done" not in runs[1].stderr
    assert json.loads(runs[0].stdout)["epoch"] == 0 and runs[0].stdout == runs[1].stdout
    assert (out / "sweep_epochs.csv").read_text().startswith("epoch,acc_mf,kl_test,ood_agreement,surrogate_acc,")
    row = next(csv.DictReader(open(out / "sweep_epochs.csv")))
    assert row["threads"] == str(DEFAULT_THREADS) and {k for k in row if "seconds" in k} == {"attack_seconds"}
    # resuming the grid with another thread count would mix them in one table: refused, saying which to pass
    again = subprocess.run([sys.executable, "-m", "core", *map(str, args), "--threads", "1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "threads differs" in again.stderr and f"--threads {DEFAULT_THREADS}" in again.stderr


def test_ray_errors_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, small_data_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    base = ["sweep", "--kind", "epochs", "--at", "0", "--data-dir", str(small_data_dir)]
    assert main([*base, "--out", str(tmp_path / "a"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install -r requirements-ray.txt" in err and err.count("\n") == 1
    assert main([*base, "--out", str(tmp_path / "b"), "--ray-address", "auto"]) == 2
    assert "--ray-address is for --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(GridError, match="retries must be an integer >= 0"):
        run_grid([], tmp_path / "c", run_cell, LocalExecutor(), retries=-1)


def test_sigterm_stops_a_ray_sweep_with_one_line(small_data_dir, tmp_path):
    """SIGTERM to `sweep --executor ray` once Ray is up: the CLI's own handling (one line, exit 143), not Ray's
    driver handler (a C++ stack dump and an abort, exit 134), and no Ray process left behind."""
    import signal
    import time

    pytest.importorskip("ray", reason="Ray is not installed: pip install -r requirements-ray.txt")
    proc = subprocess.Popen([sys.executable, "-m", "core", "sweep", "--kind", "margin", "--margins", "5", "--epochs", "3",
                             "--preset", "lecture", "--executor", "ray", "--out", str(tmp_path / "out"),
                             "--data-dir", str(small_data_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in proc.stdout:  # until Ray is up and the grid has begun
        said.append(line)
        if line.startswith("Ray: "):
            break
    assert said and said[-1].startswith("Ray: "), "".join(said)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(120) == 128 + signal.SIGTERM, "".join(said) + rest
    assert "terminated (SIGTERM)" in rest and "SIGTERM received" not in rest and "logging.cc" not in rest, rest
