"""The paper's Tables 2-3 reproduced honestly. Fidelity of every baseline on cases known by hand,
best vs final surrogate accuracy, the ID-transfer guard, the budgets of each --scale, presets whose victim
is missing, the `table` command end to end on tiny budgets (the offline digits), and the committed
full-width victim. Small and fast: a few seconds per test on one core."""

import json
import math

import pytest
import torch
import torch.nn as nn

from core import load_model
from core.advft import PRESETS, ConfigError
from core.attacks import (AdaptiveMisinformation, AttackConfig, BlackBoxAPI, DeceptivePerturbation, DefenceConfig,
                          _Scoreboard, best_accuracy, run_attack)
from core.cli import build_parser, main
from core.data import Dataset, load_dataset, to_float
from core.experiments import METHOD_LABELS, run_cell, scaled_advft, scaled_attack
from core.grid import Cell
from core.metrics import fidelity, outputs
from core.models import build_model
from tests.conftest import ROOT, tiny_config

LENET = ROOT / "assets" / "victims" / "mnist_lenet.pt"
CONFIDENT = [1 - 9e-6] + [1e-6] * 9  # the top class and nine tiny ones: the paper's "confident output"
TINY_KO = dict(attack="knockoff", queries=64, epochs=1, batch_size=32, eval_size=60, transfer="natural")


def dp_by_hand(p: list[float], beta: float = 0.7, gamma: float = 0.5) -> list[float]:
    """Lee et al.'s reverse sigmoid, written out: y - beta (sigmoid(gamma logit y) - 1/2), renormalised."""
    out = [y - beta * (1 / (1 + math.exp(-gamma * math.log(y / (1 - y)))) - 0.5) for y in p]
    return [v / sum(out) for v in out]


def kl_by_hand(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def constant_model(probabilities: list[float], dataset: str = "digits") -> nn.Module:
    """A real LeNet-5 whose head ignores its input: every image gets softmax = `probabilities`."""
    model = build_model("lenet5", dataset)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(probabilities).log())
    return model.eval()


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")  # the offline default: needs nothing on disk


# ---------------------------------------------------------------- fidelity, known by hand


def test_fidelity_of_each_baseline_is_known_by_hand(digits):
    model = constant_model(CONFIDENT)
    x, y = digits.x_test[:40], digits.y_test[:40]
    ref = {"test": outputs(model, x)[1]}

    def kl_of(defence) -> float:
        return fidelity(ref, {"test": BlackBoxAPI(model, "soft", defence).respond(x, log=True)}, y)["kl_test"]

    # none: P_R itself
    assert kl_of(None) == pytest.approx(0, abs=1e-12)
    # DP on a confident output: the hand value, ~1.77 as in the paper's Table 2
    by_hand = kl_by_hand(CONFIDENT, dp_by_hand(CONFIDENT))
    assert by_hand == pytest.approx(1.77, abs=0.02) and kl_of(DeceptivePerturbation(0.7, 0.5)) == pytest.approx(by_hand, rel=1e-3)
    # AM with a hand-made misinformation model q: alpha = sigmoid(nu (tau - max p))
    q = [0.05] * 9 + [0.55]
    mis = constant_model(q)
    assert kl_of(AdaptiveMisinformation(mis, 0.5, 100.0)) < 1e-12  # confident: alpha = sigmoid(-50), P_R kept
    unsure = [0.3, 0.25] + [0.45 / 8] * 8
    model = constant_model(unsure)
    ref = {"test": outputs(model, x)[1]}
    alpha = 1 / (1 + math.exp(-10.0 * (0.5 - 0.3)))  # a soft switch, nu = 10: alpha = 0.88
    blend = [(1 - alpha) * a + alpha * b for a, b in zip(unsure, q)]
    assert kl_of(AdaptiveMisinformation(mis, 0.5, 10.0)) == pytest.approx(kl_by_hand(unsure, blend), rel=1e-4)


def test_a_hard_label_thief_does_not_change_the_soft_answer_kl(digits):
    """The table's KL column is what honest soft-label users get, whatever labels the thief asks for: DP's
    is the hand value with a hard-label thief too, not KL(P_R || one-hot answer), and none's is 0."""
    victims = {"const": (constant_model(CONFIDENT), digits)}
    rows = {}
    for labels in ("soft", "hard"):
        for defence in ("none", "dp"):
            cell = Cell(f"{defence}-{labels}", "const", {**TINY_KO, "labels": labels}, {"name": defence}, fidelity=True)
            rows[defence, labels] = run_cell(cell, None, victims=victims)["points"][0]
    dp_soft, dp_hard = rows["dp", "soft"]["fidelity"], rows["dp", "hard"]["fidelity"]
    assert dp_hard == dp_soft and dp_hard["kl_test"] == pytest.approx(kl_by_hand(CONFIDENT, dp_by_hand(CONFIDENT)), rel=1e-3)
    assert rows["dp", "hard"]["attack"]["labels"] == "hard"  # the thief did get one-hot answers
    one_hot = kl_by_hand(CONFIDENT, [1 - 9e-30] + [1e-30] * 9)  # what scoring the hard answers would charge DP
    assert abs(one_hot - dp_hard["kl_test"]) > 1.0
    for labels in ("soft", "hard"):
        none = rows["none", labels]["fidelity"]
        assert none["kl_train"] == none["kl_test"] == 0.0


# ---------------------------------------------------------------- best and final


class FixedLogits(nn.Module):
    """A 'surrogate' whose logits are given: its accuracy on the scored images is known in advance."""

    def __init__(self, y: torch.Tensor, correct: int):
        super().__init__()
        self.logits = nn.functional.one_hot((y + (torch.arange(len(y)) >= correct).long()) % 10, 10).float()
        self.head = nn.Identity()

    def features(self, x):
        return self.logits[:len(x)]


def test_best_and_final_accuracy_are_both_recorded_from_the_curve(digits):
    api = BlackBoxAPI(constant_model(CONFIDENT), budget=100)
    config = AttackConfig(eval_size=50).validate()
    board = _Scoreboard(api, digits, config, DefenceConfig(), None, None, 0.0)
    y = digits.y_test[:50]
    for correct, queries in ((15, 20), (40, 50), (25, 100)):  # 30%, 80%, 50%
        api.queries_used = queries
        board.score(FixedLogits(y, correct))
    r = board.result
    assert [p["acc"] for p in r.curve] == pytest.approx([0.3, 0.8, 0.5])
    assert r.surrogate_acc == pytest.approx(0.5) and r.surrogate_best_acc == pytest.approx(0.8)
    assert best_accuracy([{"acc": 0.2}], [{"acc": 0.9}, {"acc": None}]) == 0.9 and best_accuracy([]) is None


def test_knockoff_trains_until_its_accuracy_stops_improving(digits):
    model = constant_model(CONFIDENT)
    # min_delta 1: no pass can improve enough, so patience 1 stops after the second pass of the five allowed
    config = AttackConfig(**{**TINY_KO, "epochs": 5, "patience": 1, "min_delta": 1.0})
    r = run_attack(model, digits, config)
    assert r.status == "finished" and r.early_stopped and r.epochs_trained == 2 and len(r.train_curve) == 2
    assert [p["epoch"] for p in r.train_curve] == [1, 2] and r.surrogate_acc == r.train_curve[-1]["acc"]
    assert r.surrogate_best_acc == max(p["acc"] for p in r.curve + r.train_curve)
    plain = run_attack(model, digits, AttackConfig(**{**TINY_KO, "epochs": 2}))
    assert not plain.early_stopped and plain.epochs_trained == 2 and plain.train_curve == []
    with pytest.raises(ConfigError, match="patience"):
        AttackConfig(patience=-1).validate()


# ---------------------------------------------------------------- no silent ID transfer sets


def test_an_id_transfer_set_is_refused_unless_allowed(victim, mnist_small, small_data_dir, tmp_path):
    own = str(small_data_dir / "mnist.npz")  # the victim's own MNIST images, as a transfer set
    config = AttackConfig(attack="knockoff", queries=100, epochs=1, eval_size=100, transfer=own)
    with pytest.raises(ConfigError, match="copies of the victim's own mnist images"):
        run_attack(victim, mnist_small, config)
    r = run_attack(victim, mnist_small, AttackConfig(**{**config.__dict__, "allow_id_transfer": True}))
    assert r.id_transfer and "allowed explicitly" in r.transfer_source and r.to_dict()["id_transfer"]
    assert not run_attack(victim, mnist_small, AttackConfig(**{**config.__dict__, "transfer": "natural"})).id_transfer
    # by name: CIFAR-10 queries against a CIFAR-10 victim; and AdvFT's OOD probes likewise
    from core.training import new_trainer

    cifar = load_dataset("cifar10", small_data_dir)
    model = build_model("lenet2d", "cifar10")
    with pytest.raises(ConfigError, match="victim's own training distribution"):
        run_attack(model, cifar, AttackConfig(attack="knockoff", queries=50, epochs=1, eval_size=50), data_dir=small_data_dir)
    with pytest.raises(ConfigError, match="--ood noise or natural"):
        new_trainer(model, cifar, tiny_config(), small_data_dir)
    trainer = new_trainer(model, cifar, tiny_config(allow_id_ood=True), small_data_dir)
    assert "allowed explicitly" in trainer.ood_source
    # the command line: one line, exit 2, nothing written; with the flag, the result says so
    out = tmp_path / "ko"
    args = ["attack", "--target", "mnist_lenet2d", "--transfer", own, "--queries", "100", "--train-epochs", "1",
            "--eval-size", "100", "--data-dir", str(small_data_dir), "--out", str(out)]
    assert main(args) == 2 and not out.exists()
    assert main([*args, "--allow-id-transfer"]) == 0
    assert json.loads((out / "result.json").read_text())["id_transfer"] is True


# ---------------------------------------------------------------- budgets and presets


def test_scales_give_the_papers_budgets():
    assert scaled_attack("knockoff", "cpu").queries == 50_000 and scaled_attack("knockoff", "cpu").patience > 0
    paper = scaled_attack("dfme", "paper")
    assert paper.queries == 6_000_000 and paper.dfme_batch == 256
    assert scaled_attack("knockoff", "paper", queries=1000).queries == 1000  # an option given wins
    assert scaled_advft("table-mnist", "paper", "knockoff").epochs == 75
    assert scaled_advft("table-mnist", "paper", "dfme").margin == 100 and scaled_advft("table-mnist", "cpu", "dfme").epochs == 8
    with pytest.raises(ConfigError, match="unknown scale"):
        scaled_attack("knockoff", "huge")
    assert PRESETS["paper"]["victim"] == PRESETS["table-mnist"]["victim"] == "mnist_lenet"
    from core.cli import advft_config, attack_config

    def parsed(*argv):
        a = build_parser().parse_args([*argv, "--out", "x"])
        return attack_config(a), advft_config(a) if hasattr(a, "preset") else None

    attack, advft = parsed("table", "--preset", "table-mnist")
    assert (attack.attack, attack.queries, attack.patience, advft.epochs, advft.margin) == ("knockoff", 50_000, 5, 8, 100)
    attack, advft = parsed("table", "--preset", "table-mnist", "--attack", "dfme", "--scale", "paper")
    assert (attack.queries, advft.epochs, advft.i_f) == (6_000_000, 6, 4690)
    assert parsed("sweep", "--kind", "epochs")[0].attack == "dfme"  # the paper's Fig. 4 is DFME's
    assert parsed("sweep", "--kind", "epochs", "--attack", "knockoff")[0].attack == "knockoff"
    a = build_parser().parse_args(["sweep", "--preset", "table-mnist", "--also", "knockoff", "--queries", "1000",
                                   "--patience", "3", "--out", "x"])
    also = attack_config(a, a.also)  # the scale's budget for the added thief; the other options as given
    assert (attack_config(a).queries, also.attack, also.queries, also.patience) == (1000, "knockoff", 50_000, 3)
    assert parsed("table")[0].queries == 20_000 and parsed("attack", "--target", "t")[0].queries == 20_000


def test_presets_whose_victim_is_missing_say_how_to_train_it(monkeypatch, tmp_path, capsys):
    import shutil

    import core.victims
    from app.state import UI_PRESETS, UIState, preset_available

    for sidecar in core.victims.VICTIMS_DIR.glob("*.json"):  # the records of the victims, none of their checkpoints
        shutil.copy(sidecar, tmp_path)
    monkeypatch.setattr(core.victims, "VICTIMS_DIR", tmp_path)
    assert not any(preset_available(p) for p in UI_PRESETS)
    state, warnings = UIState.from_query({"preset": "table-mnist"})
    assert state.preset == "lecture" and "--arch lenet " in warnings[0]
    for argv in (["advft", "--preset", "table-mnist"], ["table", "--preset", "paper"]):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "train-victim --dataset mnist --arch lenet " in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the table command


@pytest.mark.slow
def test_table_command_end_to_end(tmp_path, capsys):
    """The whole row block on the offline digits (an empty data dir): two seeds for the none row, files in
    four formats, best as the headline, and a hard-label table that says its KL is the soft answers'."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    common = ["--preset", "offline", "--data-dir", str(empty), "--attack", "knockoff", "--queries", "200",
              "--train-epochs", "2", "--patience", "1", "--eval-size", "100", "--epochs", "1", "--ig", "2", "--if", "3"]
    out = tmp_path / "soft"
    assert main(["table", *common, "--seeds", "0,1", "--seed-rows", "none", "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "table.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["AdvFT", "DP", METHOD_LABELS["am"], "none"]  # digits: no paper block
    assert rows["none"]["seeds"] == [0, 1] and rows["DP"]["seeds"] == [0] and len(rows["none"]["per_seed"]) == 2
    assert set(report["cells"]) == {"before-s0", "advft-s0", "dp-s0", "am-s0", "before-s1"}
    dp = report["results"]["dp"]
    assert rows["DP"]["acc_ms_after"] == dp["surrogate_best_acc"] and rows["DP"]["acc_ms_after_final"] == dp["surrogate_acc"]
    assert all(r["acc_ms_after"] >= r["acc_ms_after_final"] and r["epochs_trained"] <= 2 for r in rows.values())
    assert rows["none"]["kl_test"] == 0 and rows["DP"]["kl_test"] > 1 and rows["AdvFT"]["n"] == 1
    md, html = (out / "table.md").read_text(), (out / "table.html").read_text()
    assert "Acc_MS best" in md and "AM (simplified)" in md and "outlier exposure" in md
    assert "Before defence" in html and "After defence" in html and "soft answers" in html
    assert (out / "table.csv").read_text().startswith("method,acc_mr,acc_ms_before,acc_ms_before_final,q,")
    hard = tmp_path / "hard"
    assert main(["table", *common, "--labels", "hard", "--rows", "dp,none", "--out", str(hard)]) == 0
    hard_report = json.loads((hard / "table.json").read_text())
    hard_rows = {r["method"]: r for r in hard_report["rows"]}
    assert hard_report["results"]["dp"]["labels"] == "hard"
    assert hard_rows["DP"]["kl_test"] == rows["DP"]["kl_test"] and hard_rows["DP"]["kl_train"] == rows["DP"]["kl_train"]
    assert "KL columns are nevertheless the soft-answer fidelity" in (hard / "table.md").read_text()


# ---------------------------------------------------------------- the paper's victim


@pytest.mark.skipif(not LENET.is_file(), reason="assets/victims/mnist_lenet.pt is not committed yet")
def test_the_papers_victim_loads_and_reaches_its_recorded_accuracy(mnist):
    model = load_model(LENET)
    info = json.loads(LENET.with_suffix(".json").read_text())
    assert (model.arch, model.dataset, model.feature_dim) == ("lenet", "mnist", 500)
    assert info["test_accuracy"] == model.info["test_accuracy"] >= 0.993 and "--arch lenet " in info["command"]
    with torch.no_grad():
        correct = sum(int((model(to_float(mnist.x_test[i:i + 2500])).argmax(1) == mnist.y_test[i:i + 2500]).sum())
                      for i in range(0, len(mnist.x_test), 2500))
    assert correct / len(mnist.x_test) == pytest.approx(info["test_accuracy"], abs=2e-4)


def test_table_attacks_each_seeds_own_protected_model(tmp_path, capsys):
    """--protected with {seed}: the AdvFT row of seed s attacks seed s's model (AdvFT runs made once, attacked
    by several tables), and a seed without its model is refused before any cell runs."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    tiny = ["--preset", "offline", "--data-dir", str(empty), "--epochs", "1", "--ig", "2", "--if", "3"]
    for seed in (0, 1):
        assert main(["advft", *tiny, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    pattern = str(tmp_path / "s{seed}" / "model.pt")
    attack = ["--attack", "knockoff", "--queries", "200", "--train-epochs", "1", "--eval-size", "100"]
    out = tmp_path / "table"
    assert main(["table", *tiny, *attack, "--protected", pattern, "--seeds", "0,1", "--rows", "advft",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    cells = {p.stem: json.loads(p.read_text())["cell"] for p in (out / "cells").glob("advft-*.json")}
    assert {n: c["target"] for n, c in cells.items()} == {f"advft-s{s}": str(tmp_path / f"s{s}" / "model.pt")
                                                          for s in (0, 1)}
    assert not (out / "advft-s0").exists()  # no AdvFT was run: the models were given
    assert main(["table", *tiny, *attack, "--protected", pattern, "--seeds", "0,2", "--rows", "advft",
                 "--out", str(tmp_path / "missing")]) == 2
    assert "s2" in capsys.readouterr().err and not (tmp_path / "missing" / "cells").exists()
