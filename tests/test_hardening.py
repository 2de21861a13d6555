"""Bad input, hostile input and crashes: no traceback, no stuck run, no injected markup, no code run.

Command-line cases call the entry point's main() in this process (exit status 2, one line on stderr, no
exception); what only a real process shows (SIGTERM, kill -9, a full disk) runs as one; app cases through
AppTest; a kill -9 at several moments of a run leaves a folder that resumes or says what happened."""

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.jobs import Job, JobSlots, JobSpec
from app.state import UIState
from core.advft import AdvFTConfig
from core.cli import main
from core.runs import RunConfig, RunDir
from tests.conftest import MNIST_VICTIM, ROOT, tiny_config

ENTRY = str(ROOT / "streamlit_app.py")
TINY = ["--epochs", "1", "--ig", "1", "--if", "2", "--batch-size", "16"]


def cli(*args) -> tuple[int, str, str]:
    """`python -m core ARGS` as core/__main__.py runs it, in this process (a fresh interpreter costs a torch
    import, ~3 s, per case): exit status, stdout, stderr. An exception main() lets out fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's refusals
            code = e.code
    return code, out.getvalue(), err.getvalue()


def clean_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert all(w in last for w in words), last


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (d / "json.pt").write_text('{"format": 1}')
    (d / "empty.pt").write_bytes(b"")
    marker = d / "CODE-RAN"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "arch": "lenet2d", "payload": Evil()}, d / "evil.pt")
    np.savez(d / "empty-transfer.npz", x=np.zeros((0, 32, 32, 3), np.uint8))
    (d / "afile").write_text("not a folder")
    return d


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_refuses_bad_values_before_any_work(tmp_path):
    for args, words in [
        (["advft", "--seed", "99999999999999999999999", "--out", tmp_path / "a"], ["--seed", "seed must be an integer from 0"]),
        (["advft", "--epochs", "1000000000000", "--out", tmp_path / "a"], ["--epochs", "epochs must be an integer from 1"]),
        (["advft", "--batch-size", "100000000", "--out", tmp_path / "a"], ["batch size", "8,192"]),
        (["attack", "--target", "mnist_lenet2d", "--seed", "-1", "--out", tmp_path / "a"], ["must be >= 0"]),
        (["sweep", "--at", "0,99999", "--out", tmp_path / "a"], ["--at"]),
        (["sweep", "--also", "dfme", "--out", tmp_path / "a"], ["--also dfme", "the other one"]),
        (["train-victim", "--dataset", "mnist", "--lr", "1e6", "--out", tmp_path / "a"], ["--lr", "at most 1"]),
        (["train-victim", "--dataset", "mnist", "--lr", "nan", "--out", tmp_path / "a"], ["--lr"]),
    ]:
        clean_error(*cli(*args)[::2], *words)
        assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_cli_checks_out_before_the_work(tmp_path, bad_files):
    # With a data folder that lacks MNIST, any work started before the --out check would fail on the data
    # instead: the --out message proves the check comes first (refused up front, not after an attack).
    (tmp_path / "no-data").mkdir()
    for command in (["attack", "--target", "mnist_lenet2d", "--queries", "100"],
                    ["train-victim", "--dataset", "mnist", "--epochs", "1"],
                    ["advft", "--victim", "mnist_lenet2d", *TINY]):
        clean_error(*cli(*command, "--out", bad_files / "afile", "--data-dir", tmp_path / "no-data")[::2], "is a file")
        clean_error(*cli(*command, "--out", bad_files / "afile" / "sub", "--data-dir", tmp_path / "no-data")[::2],
                    "cannot be written")


def test_cli_checkpoints_say_what_is_wrong_and_never_run_code(tmp_path, bad_files, small_data_dir):
    cases = {"random.pt": "not a PyTorch file", "json.pt": "not a PyTorch file", "empty.pt": "empty",
             "evil.pt": "refused"}
    for name, words in cases.items():
        code, out, err = cli("attack", "--target", bad_files / name, "--queries", "100", "--out", tmp_path / "o",
                             "--data-dir", small_data_dir)
        clean_error(code, err, words)
        assert len(err.strip().splitlines()[-1]) < 200
    assert not (bad_files / "CODE-RAN").exists()


@pytest.mark.slow
def test_cli_names_a_committed_victim_and_an_empty_transfer_set(tmp_path, bad_files, small_data_dir):
    code, out, err = cli("advft", "--victim", "mnist_lenet2d", *TINY, "--out", tmp_path / "r",
                         "--data-dir", small_data_dir)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "finished"
    clean_error(*cli("attack", "--target", "mnist_lenet2d", "--queries", "100", "--transfer",
                     bad_files / "empty-transfer.npz", "--out", tmp_path / "k", "--data-dir", small_data_dir)[::2],
                "empty-transfer.npz")


@pytest.mark.slow
def test_cli_datasets_are_checked_where_they_are_read(tmp_path, data_dir):
    with np.load(data_dir / "mnist.npz") as z:
        good = {k: z[k][:200] for k in ("x_train", "y_train", "x_test", "y_test")}
    for name, change, words in [
        ("float", {"x_train": good["x_train"].astype(np.float32) / 255}, ["uint8"]),
        ("labels", {"y_test": good["y_test"] + 50}, ["label"]),
        ("short", {"y_test": good["y_test"][:10]}, ["y_test"]),
        ("empty", {"x_test": good["x_test"][:0], "y_test": good["y_test"][:0]}, ["x_test"]),
    ]:
        d = tmp_path / name
        d.mkdir()
        np.savez(d / "mnist.npz", **{**good, **change})
        clean_error(*cli("advft", *TINY, "--out", tmp_path / f"o-{name}", "--data-dir", d)[::2], *words)
        assert not (tmp_path / f"o-{name}").exists()


def test_cli_runs_lists_every_run_whatever_its_files(tmp_path, small_data_dir):
    cfg = RunConfig(advft=AdvFTConfig(), victim="mnist_lenet2d", dataset="mnist", arch="lenet2d")
    for name in ("good", "bad-history", "list-config", "null-acc", "killed"):
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        run.write_config(cfg)
        run.write_status("stopped")
        run.write_history([{"epoch": 0, "acc_after": 0.99}])
    (tmp_path / "bad-history" / "history.jsonl").write_text("{broken\n")
    (tmp_path / "list-config" / "config.json").write_text("[1, 2, 3]")
    (tmp_path / "null-acc" / "history.jsonl").write_text('{"epoch": 0, "acc_after": null}\n')
    RunDir(tmp_path / "killed").write_status("running")  # its process was killed: nobody holds the lock
    # 2 KB of nesting (json.loads fails on it with a RecursionError), and valid JSON of the wrong shape
    for name in ("deep-status", "deep-config", "list-created", "dict-message"):
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        run.write_config(cfg)
        run.write_status("finished")
    (tmp_path / "deep-status" / "status.json").write_text("[" * 1000 + "]" * 1000)
    (tmp_path / "deep-config" / "config.json").write_text("[" * 1000 + "]" * 1000)
    created = json.loads((tmp_path / "list-created" / "config.json").read_text())
    (tmp_path / "list-created" / "config.json").write_text(json.dumps({**created, "created": {"a": [1]}, "preset": [2]}))
    (tmp_path / "dict-message" / "status.json").write_text(json.dumps({"status": "stopped", "message": {"a": 1}}))
    code, out, err = cli("runs", tmp_path)
    assert code == 0 and "Traceback" not in err, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"good", "bad-history", "list-config", "null-acc", "killed", "deep-status", "deep-config",
                          "list-created", "dict-message"}
    assert "interrupted" in lines["killed"] and "history.jsonl does not read" in lines["bad-history"]
    assert "config.json is not a run configuration" in lines["list-config"] and "acc -" in lines["null-acc"]
    assert "status.json is missing or damaged" in lines["deep-status"]
    assert "config.json does not read (nested more than" in lines["deep-config"]
    assert "is not a run configuration ('preset' is a list)" in lines["list-created"]
    assert "stopped" in lines["dict-message"] and "message is damaged" in RunDir(tmp_path / "dict-message").summary().message


def test_json_readers_are_bounded_in_depth_and_size(tmp_path, monkeypatch):
    from core import runs

    (tmp_path / "deep.json").write_text("[" * 40 + "]" * 40)  # parses, but deeper than any file of ours
    (tmp_path / "ok.json").write_text(json.dumps({"a": [[1, 2], {"b": None}]}))
    with pytest.raises(ValueError, match="nested more than"):
        runs.load_json(tmp_path / "deep.json")
    assert runs.read_json(tmp_path / "deep.json", "default") == "default"
    assert runs.load_json(tmp_path / "ok.json") == {"a": [[1, 2], {"b": None}]}
    monkeypatch.setattr(runs, "MAX_JSON_BYTES", 10)
    with pytest.raises(ValueError, match="larger than"):
        runs.load_json(tmp_path / "ok.json")


def test_a_run_whose_final_metrics_fail_or_are_interrupted_says_so_and_resume_only_finishes_them(
        tmp_path, small_data_dir, monkeypatch):
    from core import advft
    from core.training import RecordedRun, drive

    def broken(self):
        raise RuntimeError("the disk went away")

    cfg = tiny_config(epochs=2, i_g=1, i_f=2)
    for why, error in (("failed", broken), ("stopped", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))):
        out = tmp_path / why
        run = RecordedRun.create(out, str(MNIST_VICTIM), cfg, str(small_data_dir))
        with monkeypatch.context() as m:
            m.setattr(advft.AdvFT, "metrics", error)
            with pytest.raises((RuntimeError, KeyboardInterrupt)):
                drive(run)
        st = RunDir(out).status()
        assert st["status"] == why and not (out / "metrics.json").exists(), st
        assert "the disk went away" in st["message"] if why == "failed" else "final metrics" in st["message"]
        assert RunDir(out).summary().resumable and RunDir(out).summary().epoch == 2
        resumed = RecordedRun.resume(out, str(small_data_dir))
        assert resumed.trainer.finished  # every epoch was saved: resuming only computes the metrics
        assert drive(resumed) == "finished" and json.loads((out / "metrics.json").read_text())["epochs_done"] == 2


@pytest.mark.slow
def test_sigterm_stops_a_run_that_says_how_far_it_got_and_resumes(tmp_path, small_data_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "core", "advft", "--victim", "mnist_lenet2d", "--epochs", "4",
                             "--ig", "1", "--if", "30", "--batch-size", "16", "--out", str(out), "--data-dir",
                             str(small_data_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "history.jsonl").is_file() or len((out / "history.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    st = RunDir(out).status()
    assert st["status"] == "stopped" and "interrupted during epoch" in st["message"], st
    assert RunDir(out).summary().epoch >= 1
    code, stdout, err = cli("advft", "--resume", "--out", out, "--data-dir", small_data_dir)
    assert code == 0 and json.loads(stdout)["epochs_done"] == 4, err
    assert RunDir(out).status()["message"] == "end of epoch 4 of 4"


def _limited_files(max_bytes: int):
    """A child process that may write no file larger than max_bytes: what a full disk looks like to it
    (EFBIG instead of ENOSPC), for real processes without mounting a small filesystem."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_neither_the_folder_name_nor_the_result(tmp_path, small_data_dir):
    run_args = ["advft", "--victim", "mnist_lenet2d", *TINY, "--out", tmp_path / "r", "--data-dir", small_data_dir]
    full = subprocess.run([sys.executable, "-m", "core", *map(str, run_args)], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=_limited_files(20_000), timeout=600)
    clean_error(full.returncode, full.stderr, "File too large")
    assert not (tmp_path / "r").exists()  # no half-made run: the same --out works once there is room
    code, _, err = cli(*run_args)
    assert code == 0, err
    attack = subprocess.run([sys.executable, "-m", "core", "attack", "--target", "mnist_lenet2d", "--queries", "200",
                             "--train-epochs", "1", "--eval-size", "100", "--out", str(tmp_path / "a"),
                             "--data-dir", str(small_data_dir)], cwd=ROOT, capture_output=True, text=True,
                            preexec_fn=_limited_files(20_000), timeout=600)
    clean_error(attack.returncode, attack.stderr, "result is printed above", "File too large")
    assert json.loads(attack.stdout)["queries"] == 200  # the work is not lost


# ---------------------------------------------------------------- kill -9


def _kill_when(cmd, out: Path, ready, env, hang_guard=900) -> None:
    """Start `python -m core CMD` and kill -9 it once `ready(out)` holds. Waits for that moment however slow
    the machine (the guard is for a hang only), and says so if the run ended before it."""
    proc = subprocess.Popen([sys.executable, "-m", "core", *map(str, cmd)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + hang_guard
    try:
        while not ready(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        reached = ready(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reached, f"the run exited ({proc.returncode}) or hung before the moment to kill it"


@pytest.mark.parametrize("moment", ["config written", "epoch 1 saved", "mid-epoch 2"])
@pytest.mark.slow
def test_kill_9_leaves_a_run_that_resumes(moment, tmp_path, small_data_dir):
    out = tmp_path / "run"
    ready = {"config written": lambda o: (o / "status.json").is_file(),
             "epoch 1 saved": lambda o: (o / "state.pt").is_file(),
             "mid-epoch 2": lambda o: (o / "history.jsonl").is_file()
             and len((o / "history.jsonl").read_text().splitlines()) >= 2}[moment]
    cmd = ["advft", "--victim", "mnist_lenet2d", "--epochs", "3", "--ig", "2", "--if", "30", "--batch-size", "16",
           "--out", out, "--data-dir", small_data_dir]
    _kill_when(cmd, out, ready, {})
    summary = RunDir(out).summary()
    assert summary.status == "interrupted" and summary.resumable and not summary.problem
    code, stdout, err = cli("advft", "--resume", "--out", out, "--data-dir", small_data_dir)
    assert code == 0, err
    assert RunDir(out).summary().status == "finished" and json.loads(stdout)["epochs_done"] == 3
    assert not list(out.glob(".*.tmp")) and not list(out.glob("snapshots/.*.tmp"))


@pytest.mark.slow
def test_a_kill_during_the_first_state_write_resumes_from_epoch_0(tmp_path, small_data_dir):
    """What a kill -9 inside the first atomic write of state.pt leaves: model.pt of epoch 1, a torn
    temporary, no state.pt, status 'running'. (The real kill lands there only by luck; this is the state.)"""
    out = tmp_path / "run"
    code, _, err = cli("advft", "--victim", "mnist_lenet2d", *TINY, "--out", out, "--data-dir", small_data_dir)
    assert code == 0, err
    (out / "state.pt").unlink()
    (out / ".state.pt.x1y2.tmp").write_bytes(os.urandom(100_000))
    (out / "metrics.json").unlink()
    RunDir(out).write_status("running", "epoch 1 of 1")
    assert RunDir(out).summary().resumable
    code, stdout, err = cli("advft", "--resume", "--out", out, "--data-dir", small_data_dir)
    assert code == 0, err
    assert json.loads(stdout)["epochs_done"] == 1 and not list(out.glob(".*.tmp"))
    clean_error(*cli("advft", "--victim", "mnist_lenet2d", *TINY, "--out", out, "--data-dir", small_data_dir)[::2],
                "already holds a run", "--resume")


# ---------------------------------------------------------------- the app


@pytest.fixture
def env(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


def app(query: dict | None = None, page: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_url_values_are_text_never_markup_and_never_too_long(env):
    at = app({"preset": "**x** [Log in here](https://evil.example/login) ![t](https://evil.example/t.png)",
              "run": "a" * 5000, "epochs": "1e20", "seed": "99999999999999999999"})
    texts = [w.value for w in at.warning]
    assert len(texts) == 4 and all(len(t) < 400 for t in texts)
    joined = " ".join(texts)
    assert "](" not in joined.replace("\\](", "") and "![" not in joined and "\\[Log in here\\]" in joined
    assert at.query_params["epochs"] == "15" and "run" not in at.query_params


def test_url_fuzz_never_breaks_the_state_or_the_page(env):
    rng = random.Random(0)
    keys = ["preset", "victim", "margin", "epochs", "i_g", "i_f", "lr_g", "lr_f", "distance", "fake_reduce", "seed",
            "epoch", "run", "view", "style", "proj", "junk"]
    values = ["", "0", "-1", "1e308", "nan", "inf", "3", "2.5", "..", "/etc/passwd", "lecture", "paper", "x" * 300,
              "<b>x</b>", "[a](b)", "simple", "presentation", "umap", "l2sq", "median", "\u202e", "9" * 30]
    for _ in range(200):
        query = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(1, 6))}
        state, warnings = UIState.from_query(query)
        state.config().validate()  # whatever came in, the state is a valid configuration
        assert UIState.from_query(state.to_query()) == (state, [])
    for _ in range(3):
        app({k: rng.choice(values) for k in rng.sample(keys, 5)})


def test_hostile_run_folders_are_listed_as_text_and_cannot_point_elsewhere(env):
    cfg = RunConfig(advft=AdvFTConfig(), victim="mnist_lenet2d", dataset="mnist", arch="lenet2d")
    name = "<img src=x onerror=alert(1)>"
    for folder in (name, "list-config", "bad-history", "elsewhere"):
        run = RunDir(env / folder)
        run.path.mkdir()
        run.write_config(cfg)
        run.write_status("running")
        run.write_history([{"epoch": 0, "acc_after": 0.99}])
        torch.save({}, run.state_path)
    (env / "list-config" / "config.json").write_text("[1,2,3]")
    (env / "bad-history" / "history.jsonl").write_text("{nope")
    passwd = json.loads((env / "elsewhere" / "config.json").read_text())
    (env / "elsewhere" / "config.json").write_text(json.dumps({**passwd, "victim": "/etc/passwd"}))

    at = app(page="app/pages/runs.py")
    assert set(at.dataframe[0].value["run"]) == {name, "list-config", "bad-history", "elsewhere"}
    app(page="app/pages/attack.py")  # its target list reads every run: no traceback either

    at = app({"run": name})
    assert any("\\<img" in c.value for c in at.caption) and not any("<img" in c.value.replace("\\<img", "")
                                                                    for c in at.caption)
    at = app({"run": "elsewhere"})
    at.button(key="t_resume").click().run()
    assert not at.exception and any("outside the committed victims" in e.value for e in at.error)


def test_deleting_a_run_that_links_elsewhere_removes_the_link_only(env, tmp_path):
    elsewhere = tmp_path / "someone-elses" / "run"
    elsewhere.mkdir(parents=True)
    RunDir(elsewhere).write_config(RunConfig(advft=AdvFTConfig(), victim="mnist_lenet2d", dataset="mnist", arch="lenet2d"))
    (env / "linked").symlink_to(elsewhere, target_is_directory=True)
    said = RunDir(env / "linked").delete()
    assert "Removed the link 'linked'" in said and "left as it is" in said
    assert not (env / "linked").is_symlink() and (elsewhere / "config.json").is_file()


def test_saved_files_of_an_unexpected_shape_are_shown_with_their_problem(env):
    """Valid JSON of another shape: attack rows without labels, a sweep whose rows are not rows, an atlas
    bundle without cells (named like the shipped one), a config with a list or a dict where text goes. Each
    page opens, says what it left out, and keeps its buttons."""
    from core.atlas import ATLAS_FORMAT, shipped_atlases

    attacks = env / ".attacks"
    attacks.mkdir()
    good = {"target": "original M_R · mnist_lenet2d", "defence": "none", "attack": "knockoff", "labels": "soft",
            "status": "finished", "q": 1000, "acc_ms_after": 0.5, "acc_ms_after_final": 0.4, "acc_mr": 0.99, "m": None,
            "n": None, "acc_mf": 0.99, "kl_train": 0.0, "kl_test": 0.0, "method": "none", "curve": []}
    (attacks / "attack-1.json").write_text(json.dumps({k: v for k, v in good.items() if k != "labels"}))
    (attacks / "attack-2.json").write_text(json.dumps({**good, "q": "many"}))
    (attacks / "attack-3.json").write_text(json.dumps(good))
    (attacks / "sweep-1.json").write_text(json.dumps({"rows": [1, 2]}))
    at = app(page="app/pages/attack.py")
    assert len(at.dataframe[0].value) == 1  # the one good row
    warned = " ".join(w.value for w in at.warning).replace("\\", "")  # as shown: Markdown escapes resolved
    assert "attack-1.json: no 'labels'" in warned and "'q' is str" in warned and "sweep-1.json: row 1" in warned
    assert any(b.key == "a_clear" for b in at.button)

    shipped = shipped_atlases()[0].name
    (env / "atlas" / shipped).mkdir(parents=True)
    (env / "atlas" / shipped / "atlas.json").write_text(json.dumps({"format": ATLAS_FORMAT, "cells": {}}))
    at = app(page="app/pages/atlas.py")
    assert any("must be non-empty lists" in w.value for w in at.warning) and not at.error  # the shipped one shows

    cfg = RunConfig(advft=AdvFTConfig(), victim="mnist_lenet2d", dataset="mnist", arch="lenet2d")
    for folder, field, value in (("list-victim", "victim", ["a", "b"]), ("dict-created", "created", {"at": 1})):
        run = RunDir(env / folder)
        run.path.mkdir()
        run.write_config(cfg)
        raw = json.loads((run.path / "config.json").read_text())
        (run.path / "config.json").write_text(json.dumps({**raw, field: value}))
        run.write_status("finished")
    at = app(page="app/pages/runs.py")
    assert {"list-victim", "dict-created"} <= set(at.dataframe[0].value["run"])


def test_a_toy_sweep_says_how_far_it_is_and_leaves_no_files(env, small_data_dir, monkeypatch):
    """The Attack page's sweep task: progress by runs done (not "loading the target" throughout), and its
    AdvFT runs removed when it ends, finished or stopped."""
    from dataclasses import asdict

    from app import tasks
    from tests.test_experiments import TINY_ATTACK

    monkeypatch.setattr(tasks, "TOY_ATTACK", asdict(TINY_ATTACK))
    monkeypatch.setattr(tasks, "TOY_MARGINS", (5.0, 20.0))
    monkeypatch.setattr(tasks, "preset_config", lambda name: tiny_config())
    seen = []
    report = tasks.sweep("margins", "mnist_lenet2d", str(env), str(small_data_dir), "cpu", seen.append,
                         lambda line: None, lambda: False)
    assert [r["margin"] for r in report["rows"]] == [5.0, 20.0]
    phases = [p["phase"] for p in seen]
    assert phases[0].startswith("loading") and any(p.startswith("0 of 2 runs done, run 1 in progress") for p in phases)
    assert seen[-1] == {"phase": "2 of 2 runs done", "done": 1.0}
    assert not list((env / tasks.SWEEPS_DIR).iterdir())
    stopped = tasks.sweep("margins", "mnist_lenet2d", str(env), str(small_data_dir), "cpu", seen.append,
                          lambda line: None, lambda: True)
    assert stopped["rows"] == [] and not list((env / tasks.SWEEPS_DIR).iterdir())  # stopped: nothing left either


def test_one_writer_per_run_across_tabs_and_no_deleting_a_live_run(env, data_dir):
    slots = JobSlots(2)  # as with ADVFT_MAX_JOBS=2: both could run at once
    spec = JobSpec(str(MNIST_VICTIM), tiny_config(epochs=3, i_g=1, i_f=400), env / "shared", "lecture",
                   str(data_dir), start_paused=True)
    first = Job(spec, slots).start()
    deadline = time.time() + 60
    while first.view().state != "paused" and time.time() < deadline:
        time.sleep(0.05)
    second = Job(JobSpec(**{**spec.__dict__, "resume": True}), slots).start()  # a stale Resume in tab B
    second.thread.join(60)
    assert second.view().state == "failed" and "being written by another" in second.view().message
    at = app(page="app/pages/runs.py")
    at.selectbox(key="run_pick").set_value("shared").run()
    assert "delete" not in [b.key for b in at.button]
    assert any("training right now" in i.value for i in at.info)
    first.stop()
    first.thread.join(30)
    assert RunDir(env / "shared").status()["status"] == "stopped"


@pytest.mark.slow
def test_a_closed_tab_frees_its_slot_within_seconds(env, data_dir):
    slots = JobSlots(1)
    cfg = tiny_config(epochs=50, i_g=1, i_f=400)
    left = Job(JobSpec(str(MNIST_VICTIM), cfg, env / "left", data_dir=str(data_dir)), slots, abandon_after=1.0).start()
    (env / "waiting").mkdir()
    waiting = Job(JobSpec(str(MNIST_VICTIM), cfg, env / "waiting", data_dir=str(data_dir), start_paused=True), slots)
    waiting.start()
    deadline = time.time() + 300  # a hang guard: how soon the slot frees is abandon_after, not timed here
    while waiting.view().state in ("queued", "preparing") and time.time() < deadline:
        time.sleep(0.1)  # only `waiting` is watched: `left` was never looked at again (its tab closed)
    assert waiting.view().state == "paused"
    assert left.view().state == "stopped" and "page was closed" in left.view().message
    assert RunDir(env / "left").status()["status"] == "stopped"
    waiting.stop()
    waiting.thread.join(30)


def test_a_deployed_app_shows_short_errors_and_skips_the_per_run_gc():
    """Users get a generic message for an unexpected error, the server log the traceback; and Streamlit's
    gc.collect() after every (fragment) run, which took half the server's CPU while a job trained, is off."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none" and config["runner"]["postScriptGC"] is False
    assert "streamlit run streamlit_app.py" in (ROOT / "Procfile").read_text()


@pytest.mark.slow
def test_the_preview_cache_is_bounded_and_served_victims_stay_inside(tmp_path, data_dir, monkeypatch):
    from core import training, victims

    monkeypatch.setattr(training, "PREVIEW_CACHE_ENTRIES", 2)
    for seed in range(3):  # a URL can ask for any seed: the cache keeps the newest few
        training.preview_snapshot("mnist_lenet2d", AdvFTConfig(seed=seed, probe_size=20), data_dir,
                                  cache_dir=tmp_path / "cache")
        time.sleep(0.02)
    assert len(list((tmp_path / "cache").glob("preview-*.pt"))) == 2
    assert victims.served_victim("mnist_lenet2d", tmp_path)
    assert victims.served_victim(str(tmp_path / "a-run" / "model.pt"), tmp_path)
    assert not victims.served_victim("/etc/passwd", tmp_path)
    assert not victims.served_victim(str(tmp_path / ".." / "elsewhere.pt"), tmp_path)
