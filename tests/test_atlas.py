"""The margin x epochs atlas: the grid it runs, the bundle it writes, and the Atlas page reading it.

One tiny atlas (offline digits victim, two margins, epochs 0..2, a few hundred queries) is made once
through the same chain as `python -m core atlas` (atlas_cells -> run_grid(run_cell) -> write_bundle)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.atlas import ATLAS_DIR, MARGINS, TOY_DFME, Atlas, atlas_cells, cell_key, shipped_atlases, write_bundle
from core.attacks import AttackConfig
from core.experiments import run_cell
from core.grid import LocalExecutor, run_grid
from core.runs import RunDir, RunError
from tests.conftest import app_charts, tiny_config

ROOT = Path(__file__).resolve().parent.parent
TINY_ATTACK = AttackConfig(queries=300, epochs=2, eval_size=100)
TINY_DFME = {**TOY_DFME, "queries": 896, "evals": 2}


def test_cells_one_run_per_margin_attacked_after_each_epoch():
    cells = atlas_cells("digits_lenet2d", tiny_config(), TINY_ATTACK, margins=[10, 1, 10], epochs=[4, 0, 1])
    assert [c.name for c in cells] == ["m0", "m1", "m10"]  # sorted, duplicates merged
    assert cells[0].advft is None and cells[0].at_epochs == ()
    for c in cells[1:]:
        assert c.advft["epochs"] == 4 and c.at_epochs == (1, 4)   # one run to the largest N
    assert cells[1].advft["margin"] == 1.0 and cells[2].advft["margin"] == 10.0
    dfme = cells[0].also[0]
    assert dfme["attack"] == "dfme" and dfme["surrogate"] == "same"
    assert (dfme["seed"], dfme["eval_size"]) == (TINY_ATTACK.seed, TINY_ATTACK.eval_size)  # shared with the thief
    assert atlas_cells("digits_lenet2d", tiny_config(), TINY_ATTACK, dfme=None)[0].also == ()


@pytest.mark.parametrize("margins, epochs", [([0], [1]), ([1], [0]), ([1], [-1, 2])])
def test_bad_grids_are_refused(margins, epochs):
    from core.advft import ConfigError

    with pytest.raises(ConfigError):
        atlas_cells("digits_lenet2d", tiny_config(), TINY_ATTACK, margins=margins, epochs=epochs)


@pytest.fixture(scope="module")
def tiny_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas")
    advft = tiny_config(i_g=3, i_f=6, probe_size=60, eval_ood_size=60)
    cells = atlas_cells("digits_lenet2d", advft, TINY_ATTACK, margins=[1, 10], epochs=[0, 1, 2], dfme=TINY_DFME)
    result = run_grid(cells, out / "grid", run_cell, LocalExecutor(), retries=0)
    result.raise_failed()
    bundle = write_bundle(cells, result, out / "grid", out / "runs" / "atlas" / "tiny", "digits_lenet2d",
                          "python -m core atlas (test)", result.seconds)
    return out, bundle, result


def test_bundle_has_every_cell_with_its_numbers_and_snapshot(tiny_atlas):
    out, bundle, result = tiny_atlas
    atlas = Atlas(bundle)
    assert atlas.margins == [1.0, 10.0] and atlas.epochs == [0, 1, 2]
    assert set(atlas.cells) == {cell_key(m, n) for m in (1, 10) for n in (0, 1, 2)}
    grid = result.row("m10")
    history = {h["epoch"]: h for h in RunDir(out / "grid" / "m10").history()}
    for n in (1, 2):
        cell = atlas.cell(10, n)
        point = next(p for p in grid["points"] if p["epoch"] == n)
        assert cell.acc_after == history[n]["acc_after"] and cell.kl_test == history[n]["kl_test"]
        assert cell.knockoff["surrogate_best_acc"] == point["attack"]["surrogate_best_acc"]
        assert cell.knockoff["surrogate_best_acc"] >= cell.knockoff["surrogate_acc"]
        assert cell.dfme["attack"] == "dfme" and cell.dfme["queries"] <= TINY_DFME["queries"]
        snap = atlas.snapshot(10, n)
        assert snap.epoch == n and snap.after.id.dtype.is_floating_point and snap.after.id.element_size() == 2
        assert snap.history == ()
    # N = 0 is the unprotected victim, the same thief results for every margin, and M_F = M_R
    zero = [atlas.cell(m, 0) for m in (1, 10)]
    assert zero[0].knockoff == zero[1].knockoff == {k: result.row("m0")["points"][0]["attack"][k] for k in zero[0].knockoff}
    assert all(c.kl_test == 0 and c.ood_agreement == 1.0 for c in zero)
    s0 = atlas.snapshot(10, 0)
    assert (s0.after.id == s0.before.id).all()
    # protection grows with the margin: M_F moved OOD features further at m = 10 than at m = 1
    assert atlas.cell(10, 2).ood_shift > atlas.cell(1, 2).ood_shift


def test_partial_grid_still_bundles_and_says_what_is_missing(tiny_atlas, tmp_path):
    out, _, result = tiny_atlas
    from core.grid import GridResult

    partial = GridResult(result.out, {k: v for k, v in result.records.items() if k != "m1"})
    cells = [replace(c) for c in atlas_cells("digits_lenet2d", tiny_config(i_g=3, i_f=6, probe_size=60, eval_ood_size=60),
                                             TINY_ATTACK, margins=[1, 10], epochs=[0, 1, 2], dfme=TINY_DFME)]
    atlas = Atlas(write_bundle(cells, partial, out / "grid", tmp_path / "b", "digits_lenet2d", "cmd", 1.0))
    assert atlas.margins == [10.0] and atlas.meta["missing"] == ["m1"]


def test_not_a_bundle_is_a_readable_error(tmp_path):
    with pytest.raises(RunError, match="not an atlas bundle"):
        Atlas(tmp_path)


def test_shipped_atlas_is_small_complete_and_loads():
    shipped = shipped_atlases()
    assert shipped, f"no atlas bundle in {ATLAS_DIR}"
    total = sum(p.stat().st_size for b in shipped for p in b.iterdir())
    assert total <= 5_000_000
    for bundle in shipped:
        atlas = Atlas(bundle)
        # every margin it has, at every epoch; a margin whose cell failed or never ran is listed as missing
        assert len(atlas.cells) == len(atlas.margins) * len(atlas.epochs)
        assert {f"m{m:g}" for m in atlas.margins} | set(atlas.meta["missing"]) >= {f"m{m:g}" for m in MARGINS}
        assert max(atlas.epochs) >= 20 and 0 in atlas.epochs
        assert len(atlas.snapshots()) == len(atlas.cells)
        for cell in atlas.cells.values():
            assert cell.knockoff["queries"] == 20_000 and cell.knockoff["labels"] == "soft"
            assert cell.knockoff["status"] == "finished"
            # a toy DFME either spent its budget or stopped when its student diverged (then it spent less)
            assert cell.dfme["status"] == "finished" and cell.dfme["queries"] == cell.dfme["budget"] \
                or cell.dfme["status"] == "diverged" and cell.dfme["queries"] < cell.dfme["budget"]
        # the unprotected victim is stolen well; AdvFT protects at no real cost to honest users
        unprotected = atlas.cell(atlas.margins[0], 0).knockoff["surrogate_best_acc"]
        assert unprotected > 0.7
        best = min(atlas.cells.values(), key=lambda c: c.knockoff["surrogate_best_acc"])
        assert best.knockoff["surrogate_best_acc"] < unprotected - 0.15 and best.acc_after > best.acc_mr - 0.005


# ---------------------------------------------------------------- the page


def _page(runs_dir: Path, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.switch_page("app/pages/atlas.py")
    return at


def _ood_trace(at, key="atlas_fig5"):
    fig = app_charts(at)[key]
    return next(t for t in fig["data"] if t.get("meta") == "now:ood")


def test_sliders_move_through_the_grid(tiny_atlas, monkeypatch):
    out, bundle, _ = tiny_atlas
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(out / "runs"))
    at = _page(out / "runs", {"atlas": "tiny"})
    at.run()
    assert not at.exception
    atlas = Atlas(bundle)
    shown = {m.label: m.value for m in at.metric}
    m, n = at.select_slider(key="w_atlas_m").value, at.select_slider(key="w_atlas_n").value
    assert f"{100 * atlas.cell(m, n).acc_after:.2f}%" in shown.values()
    first = _ood_trace(at)
    at.select_slider(key="w_atlas_n").set_value(2).run()
    at.select_slider(key="w_atlas_m").set_value(10.0).run()
    assert not at.exception
    assert at.query_params["am"] == "10.0" and at.query_params["an"] == "2"
    cell = atlas.cell(10, 2)
    shown = {m.label: m.value for m in at.metric}
    assert shown["KL_test"] == f"{cell.kl_test:.1e}"
    assert shown["OOD agreement"] == f"{100 * cell.ood_agreement:.1f}%"
    moved = _ood_trace(at)
    assert moved["x"] != first["x"]  # the M_F panel shows the other cell's OOD features


def test_the_shipped_atlas_page_says_when_dfme_diverged(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    atlas = Atlas(shipped_atlases()[0])
    m, n = next((c.margin, c.epochs) for c in atlas.cells.values() if c.dfme["status"] == "diverged")
    at = _page(tmp_path / "runs", {"atlas": atlas.folder.name, "am": str(m), "an": str(n)})
    at.run()
    assert not at.exception
    dfme = next(x for x in at.metric if x.label.startswith("toy DFME"))
    assert dfme.label == f"toy DFME ({atlas.cell(m, n).dfme['budget'] / 1000:g}k)" and "diverged after" in dfme.delta


def test_a_link_to_a_missing_cell_shows_the_nearest(tiny_atlas, monkeypatch):
    out, _, _ = tiny_atlas
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(out / "runs"))
    at = _page(out / "runs", {"atlas": "tiny", "am": "7", "an": "2"})
    at.run()
    assert not at.exception
    assert any("no m = 7" in w.value for w in at.warning)
    assert at.select_slider(key="w_atlas_m").value == 10.0 and at.query_params["am"] == "10.0"


def test_a_grid_made_before_new_settings_existed_still_resumes(tiny_atlas):
    """Records written before a config field was added (at its default) match their cells."""
    from core.grid import load_records

    out, _, _ = tiny_atlas
    cells = atlas_cells("digits_lenet2d", tiny_config(i_g=3, i_f=6, probe_size=60, eval_ood_size=60), TINY_ATTACK,
                        margins=[1, 10], epochs=[0, 1, 2], dfme=TINY_DFME)
    path = out / "grid" / "cells" / "m10.json"
    record = json.loads(path.read_text())
    older = json.loads(json.dumps(record))
    for settings in (older["cell"]["attack"], *older["cell"]["also"], older["cell"]["advft"]):
        settings.pop("patience", None), settings.pop("allow_id_transfer", None), settings.pop("allow_id_ood", None)
    try:
        path.write_text(json.dumps(older))
        assert load_records(cells, out / "grid")["m10"]["status"] == "done"
        # a new setting NOT at its default is another experiment: refused
        changed = [replace(c, attack={**c.attack, "patience": 3}) if c.name == "m10" else c for c in cells]
        with pytest.raises(Exception, match="other settings"):
            load_records(changed, out / "grid")
    finally:
        path.write_text(json.dumps(record))


def test_a_diverging_dfme_student_is_a_result_not_a_crash(tiny_atlas):
    from core.attacks import run_attack
    from core.training import load_victim

    model, data = load_victim("digits_lenet2d")
    r = run_attack(model, data, AttackConfig(attack="dfme", queries=896 * 6, surrogate="same", lr_student=1e4,
                                             eval_size=100, evals=6))
    assert r.status == "diverged" and "loss became" in r.extra["diverged"]
    assert r.surrogate_best_acc == max(p["acc"] for p in r.curve)
