"""Table 2/3 and the sweeps, end to end on tiny budgets (the conftest MNIST subset: 3,000 train, 1,000 test images)."""

import csv
import json
import pytest

from core.attacks import AttackConfig, DefenceConfig
from core.experiments import TABLE_COLUMNS, attack_table, epoch_sweep, format_table, margin_sweep, write_experiment
from core.figures import sweep_figure, table_figure
from tests.conftest import tiny_config

TINY_ATTACK = AttackConfig(attack="knockoff", queries=400, epochs=2, rounds=1, eval_size=500)


def test_table_rows_columns_and_files(victim, mnist_small, data_dir, tmp_path):
    notes = []
    report = attack_table(victim, mnist_small, TINY_ATTACK, tiny_config(margin=5.0), defence=DefenceConfig(am_steps=20),
                          data_dir=data_dir, out=tmp_path, note=notes.append)
    rows = {r["method"]: r for r in report["rows"]}
    cip = rows.pop("CIP (paper only, no public code)")  # an MNIST victim: the paper's Table 3 block joins ours
    assert list(rows) == ["AdvFT", "DP", "AM (simplified)", "none"] and all(set(TABLE_COLUMNS) <= set(r) for r in rows.values())
    assert cip["acc_ms_after"] is None and cip["paper_acc_ms_after"] == 0.2583 and rows["DP"]["paper_acc_ms_after"] == 0.8083
    acc_mr = rows["none"]["acc_mr"]
    assert acc_mr > 0.97 and all(r["q"] == 400 and r["acc_ms_before"] == rows["none"]["acc_ms_after"] for r in rows.values())
    assert all(r["acc_ms_after"] >= r["acc_ms_after_final"] for r in rows.values())  # best over training, and final
    assert rows["DP"]["acc_mf"] == acc_mr and rows["DP"]["kl_test"] > 1.0  # top-1 kept, confidences wrecked
    assert rows["AdvFT"]["m"] == 5.0 and rows["AdvFT"]["n"] == 1 and rows["AdvFT"]["kl_test"] < rows["DP"]["kl_test"]
    assert rows["none"]["kl_test"] == 0.0 and rows["AM (simplified)"]["acc_mf"] <= acc_mr
    assert (tmp_path / "advft" / "model.pt").is_file() and any("AdvFT epoch 1" in n for n in notes)
    lines = write_experiment(tmp_path, "table", report, table_figure(report))
    assert "table.html" in lines[0] or ".html" in lines[0]
    back = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["method"] for r in back] == ["AdvFT", "DP", "AM (simplified)", "none", "CIP (paper only, no public code)"]
    assert json.loads((tmp_path / "table.json").read_text())["results"]["dp"]["defence"] == "dp"
    assert "<html>" in (tmp_path / "table.html").read_text()[:2000].lower() or "plotly" in (tmp_path / "table.html").read_text()
    assert format_table(report["rows"]).count("\n") == 6  # header, rule, 4 rows and the paper's CIP row


def test_sweeps_attack_each_chosen_model(victim, mnist_small, data_dir, tmp_path):
    report = epoch_sweep(victim, mnist_small, tiny_config(epochs=2), TINY_ATTACK, tmp_path / "fig4", [0, 2], data_dir)
    assert [r["epoch"] for r in report["rows"]] == [0, 2]
    assert report["rows"][0]["kl_test"] == 0.0 and report["rows"][1]["kl_test"] > 0
    write_experiment(tmp_path, "sweep_epochs", report, sweep_figure(report, "epoch"))
    assert (tmp_path / "sweep_epochs.csv").read_text().startswith("epoch,")
    report = margin_sweep(victim, mnist_small, tiny_config(), TINY_ATTACK, [1.0, 20.0], tmp_path / "margins", data_dir)
    assert [r["margin"] for r in report["rows"]] == [1.0, 20.0] and all(r["queries"] == 400 for r in report["rows"])
    assert (tmp_path / "margins" / "m20" / "model.pt").is_file()  # every AdvFT run is a run folder
    with pytest.raises(ValueError, match="0..2"):
        epoch_sweep(victim, mnist_small, tiny_config(epochs=2), TINY_ATTACK, tmp_path / "x", [3], data_dir)


def test_an_epoch_sweep_runs_a_second_thief_on_the_same_models(victim, mnist_small, data_dir, tmp_path):
    """Fig. 4's DFME and a KnockoffNets thief from one AdvFT run: both columns in every row, both lines drawn."""
    dfme = AttackConfig(attack="dfme", queries=2048, evals=2, eval_size=500)
    report = epoch_sweep(victim, mnist_small, tiny_config(epochs=1), dfme, tmp_path / "fig4", [0, 1], data_dir,
                         also=(TINY_ATTACK,))
    first, last = report["rows"]
    assert [first["epoch"], last["epoch"]] == [0, 1] and 0 < first["queries"] == last["queries"] <= 2048
    assert all(1 >= r["knockoff_best_acc"] >= r["knockoff_acc"] > 0 and r["knockoff_seconds"] > 0 for r in (first, last))
    # the second thief is its own attack, with its own budget, on the same model as the first at each point
    cell = json.loads((tmp_path / "fig4" / "cells" / "advft.json").read_text())
    point = cell["row"]["points"][0]
    assert point["epoch"] == 1 and point["also"][0]["attack"] == "knockoff" and point["also"][0]["queries"] == 400
    assert point["also"][0]["surrogate_best_acc"] == last["knockoff_best_acc"]
    names = [t.name for t in sweep_figure(report, "epoch").data]
    assert names[:4] == ["DFME Acc_MS, best", "DFME Acc_MS, final", "KnockoffNets Acc_MS, best",
                         "KnockoffNets Acc_MS, final"]
    with pytest.raises(ValueError, match="must differ"):
        epoch_sweep(victim, mnist_small, tiny_config(epochs=1), dfme, tmp_path / "x", [1], data_dir, also=(dfme,))
