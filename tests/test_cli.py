"""The command line: happy paths on tiny budgets and every bad input the issue lists."""

import json
import subprocess
import sys

import pytest
import torch

from core import load_model
from core.cli import main
from tests.conftest import MNIST_VICTIM, ROOT

TINY = ["--epochs", "1", "--ig", "2", "--if", "3", "--batch-size", "16"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_shows_every_presets_real_values():
    """`advft --help` names, for every knob of AdvFTConfig, the value each preset really uses."""
    import re

    from core.advft import PRESETS, preset_config
    from core.knobs import KNOBS

    r = subprocess.run([sys.executable, "-m", "core", "advft", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split("options:")[1].split())  # argparse wraps lines
    for knob in KNOBS:
        if knob.name == "allow_id_ood":  # --allow-id-transfer, one switch for every command
            continue
        assert knob.flag in text, knob.flag
        helptext = text[text.index(knob.flag + " "):]
        helptext = helptext[helptext.index("(presets: "):helptext.index(")", helptext.index("(presets: "))]
        for name in PRESETS:
            value = getattr(preset_config(name), knob.name)
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert re.search(rf"(every preset|\b{re.escape(name)}\b[^:;]*): {re.escape(shown)}(;|$)", helptext), \
                (knob.name, name, shown, helptext)
    lecture = preset_config("lecture")
    assert f"lecture, offline: {lecture.margin:g}" in text and f"lecture, offline: {lecture.i_g}" in text


def test_train_victim_offline_default(tmp_path, capsys):
    code, out, err = run(capsys, "train-victim", "--dataset", "digits", "--arch", "lenet2d", "--epochs", "2",
                         "--seed", "1", "--out", tmp_path)
    assert code == 0, err
    assert "offline default" in err
    model = load_model(tmp_path / "digits_lenet2d.pt")
    info = json.loads((tmp_path / "digits_lenet2d.json").read_text())
    assert info["config"]["seed"] == 1 and "train-victim" in info["command"]
    assert model.info["test_accuracy"] == info["test_accuracy"] > 0.2  # well above chance after 2 epochs


def test_a_victim_that_learned_nothing_is_saved_with_a_warning(tmp_path, capsys):
    code, _, err = run(capsys, "train-victim", "--dataset", "digits", "--arch", "lenet2d", "--epochs", "1",
                       "--lr", "1", "--out", tmp_path)
    assert code == 0 and (tmp_path / "digits_lenet2d.pt").is_file()
    assert "warning: the victim is at about chance accuracy" in err and "--lr (now 1)" in err


def test_advft_happy_path(tmp_path, capsys, small_data_dir):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "advft", "--victim", MNIST_VICTIM, "--margin", "5", *TINY, "--seed", "0",
                            "--out", out, "--data-dir", small_data_dir)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("acc_before", "acc_after", "kl_train", "kl_test", "id_shift", "ood_shift", "ood_agreement", "seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["acc_before"] >= 0.97 and 0 < metrics["ood_shift"]  # first 1,000 test images
    protected = load_model(out / "model.pt")
    assert protected.arch == "lenet2d" and torch.equal(protected.head.weight, load_model(MNIST_VICTIM).head.weight)
    assert json.loads(stdout)["epochs_done"] == 1
    # the same folder again is refused; --resume of a finished run is a no-op that still reports
    code, _, err = run(capsys, "advft", "--victim", MNIST_VICTIM, *TINY, "--out", out, "--data-dir", small_data_dir)
    assert code == 2 and "--resume" in err
    code, stdout, _ = run(capsys, "advft", "--resume", *TINY, "--out", out, "--data-dir", small_data_dir)
    assert code == 0 and json.loads(stdout)["epochs_done"] == 1


def test_advft_prints_one_line_per_epoch_where_no_bar_is_drawn(tmp_path, small_data_dir):
    """Output to a log file (not a terminal): no progress bar, so one line per epoch instead of silence."""
    log = tmp_path / "advft.log"
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "core", "advft", "--victim", MNIST_VICTIM, "--epochs", "2", "--ig", "2",
                            "--if", "3", "--batch-size", "16", "--out", tmp_path / "run", "--data-dir", small_data_dir],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, timeout=600)
    text = log.read_text()
    assert r.returncode == 0, text
    lines = [line for line in text.splitlines() if line.startswith("AdvFT ")]
    assert [line.split(":")[0] for line in lines] == ["AdvFT end of epoch 1 of 2", "AdvFT end of epoch 2 of 2"], text
    assert all("Acc_MF" in line and "OOD agreement" in line for line in lines)


@pytest.mark.parametrize("args, message", [
    (["train-victim", "--dataset", "imagenet", "--out", "X"], "invalid choice"),
    (["train-victim", "--dataset", "mnist", "--arch", "vgg", "--out", "X"], "invalid choice"),
    (["train-victim", "--dataset", "digits", "--epochs", "0", "--out", "X"], "must be >= 1"),
    (["advft", "--margin", "0", "--out", "X"], "must be a finite number > 0"),
    (["advft", "--margin", "-3", "--out", "X"], "must be a finite number > 0"),
    (["advft", "--margin", "nan", "--out", "X"], "must be a finite number > 0"),
    (["advft", "--margin", "inf", "--out", "X"], "must be a finite number > 0"),
    (["advft", "--epochs", "0", "--out", "X"], "epochs must be an integer from 1"),
    (["advft", "--preset", "nope", "--out", "X"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys, tmp_path):
    args = [str(tmp_path / "x") if a == "X" else a for a in args]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "x").exists()


def test_bad_files_exit_2_and_write_nothing(tmp_path, capsys, small_data_dir):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    cases = [
        (["--victim", tmp_path / "missing.pt"], "no checkpoint"),
        (["--victim", junk], "not a readable checkpoint"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        code, _, err = run(capsys, "advft", *extra, *TINY, "--out", out, "--data-dir", small_data_dir)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
    # a data dir without MNIST
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "advft", "--victim", MNIST_VICTIM, *TINY, "--out", tmp_path / "o2", "--data-dir", empty)
    assert code == 2 and "MNIST not found" in err and not (tmp_path / "o2").exists()
    code, _, err = run(capsys, "train-victim", "--dataset", "mnist", "--out", tmp_path / "o3", "--data-dir", empty)
    assert code == 2 and "MNIST not found" in err and not (tmp_path / "o3").exists()


def test_checkpoint_that_does_not_fit_its_data(tmp_path, capsys, small_data_dir):
    """A victim whose stored dataset disagrees with the images on disk is refused up front."""
    import numpy as np

    from core.models import build_model, save_model

    save_model(build_model("lenet2d", "mnist"), tmp_path / "v.pt")
    wrong = tmp_path / "data"
    wrong.mkdir()
    z = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(wrong / "mnist.npz", x_train=z, y_train=np.zeros(4), x_test=z, y_test=np.zeros(4))
    code, _, err = run(capsys, "advft", "--victim", tmp_path / "v.pt", *TINY, "--out", tmp_path / "o", "--data-dir", wrong)
    assert code == 2 and "shape" in err and not (tmp_path / "o").exists()


def test_divergence_keeps_the_last_good_epoch(tmp_path, capsys, small_data_dir, monkeypatch):
    from core import advft

    real_step = advft.AdvFT.step_model

    def step_then_explode(self):
        if self.epoch >= 1:
            raise advft.TrainingDiverged("L_F became nan at epoch 2; lower the learning rates or the margin")
        return real_step(self)

    monkeypatch.setattr(advft.AdvFT, "step_model", step_then_explode)
    out = tmp_path / "run"
    code, _, err = run(capsys, "advft", "--victim", MNIST_VICTIM, "--epochs", "3", "--ig", "1", "--if", "2",
                       "--batch-size", "16", "--out", out, "--data-dir", small_data_dir)
    assert code == 2 and "nan" in err and "last good epoch, 1" in err
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert load_model(out / "model.pt").info["epochs_done"] == 1
    assert not (out / "metrics.json").exists()


def test_interrupted_run_resumes_to_the_end(tmp_path, capsys, small_data_dir, monkeypatch):
    from core import advft

    real_step = advft.AdvFT.step
    calls = {"n": 0}

    def interrupt_in_epoch_two(self):
        calls["n"] += 1
        if self.epoch == 1 and self.f_done == 1:
            raise KeyboardInterrupt
        return real_step(self)

    out = tmp_path / "run"
    args = ["advft", "--victim", MNIST_VICTIM, "--epochs", "2", "--ig", "1", "--if", "2", "--batch-size", "16",
            "--out", out, "--data-dir", small_data_dir]
    monkeypatch.setattr(advft.AdvFT, "step", interrupt_in_epoch_two)
    code, _, err = run(capsys, *args)
    assert code == 130
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "stopped" and "--resume" in status["message"]
    monkeypatch.setattr(advft.AdvFT, "step", real_step)
    code, stdout, err = run(capsys, "advft", "--resume", "--out", out, "--data-dir", small_data_dir)
    assert code == 0, err
    assert json.loads(stdout)["epochs_done"] == 2
    assert [h["epoch"] for h in map(json.loads, (out / "history.jsonl").read_text().splitlines())] == [0, 1, 2]
