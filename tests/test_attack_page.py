"""The Attack page (AppTest): launch a tiny KnockoffNets attack, see its row (saved: a new tab lists it);
Protect & attack uses the settings on screen; a stopped attack is no row; bad input is a message."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from app.tasks import load_results
from tests.conftest import ROOT

ENTRY = str(ROOT / "streamlit_app.py")


def open_page() -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=120).run()
    at.switch_page("app/pages/attack.py").run()
    assert not at.exception
    return at


@pytest.fixture
def page(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    return open_page()


def saved_rows(tmp_path) -> list[dict]:
    return load_results(tmp_path / "runs" / ".attacks")[0]


def test_tiny_attack_lands_in_the_table(page, tmp_path):
    at = page
    assert "original M_R · mnist_lenet2d" in at.selectbox(key="a_target").options
    at.selectbox(key="a_target").set_value("original M_R · mnist_lenet2d")
    at.number_input(key="a_queries").set_value(1000)
    at.button(key="a_launch").click().run()
    deadline = time.time() + 180
    while not saved_rows(tmp_path) and time.time() < deadline:
        time.sleep(2)
        at.run()
    at.run()
    assert not at.exception
    rows = saved_rows(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["Q"] == 1000 and row["status"] == "finished" and row["defence"] == "none"
    assert row["Acc_MF"] == pytest.approx(row["Acc_MR"]) and row["KL_test"] == pytest.approx(0, abs=1e-9)
    assert row["curve"][-1]["queries"] == 1000 and 0 <= row["Acc_MS"] <= 1
    assert any("finished" in s.value for s in at.success)
    assert at.dataframe, "the results table is drawn"
    table = open_page().dataframe[0].value  # a new tab (session) lists the saved result
    assert list(table["Q"]) == [1000] and list(table["m"]) == ["-"] and list(table["KL_test"]) == [0.0]


def test_protect_and_attack_uses_the_settings_on_screen_and_a_stopped_attack_is_no_row(page, tmp_path):
    at = page
    at.radio(key="a_attack").set_value("dfme")
    at.number_input(key="a_queries").set_value(100_000)
    at.button(key="a_launch").click().run()  # launched with DFME ...
    at.button(key="a_stop").click().run()
    deadline = time.time() + 60
    while at.button(key="p_go").disabled and time.time() < deadline:  # the stopped task winds down
        time.sleep(0.5)
        at.run()
    at.radio(key="a_attack").set_value("knockoff")  # ... then KnockoffNets chosen, not launched
    at.number_input(key="a_queries").set_value(20_000)
    at.select_slider(key="p_margin").set_value(50.0)
    at.number_input(key="p_epochs").set_value(1)
    at.button(key="p_go").click().run()
    assert not at.exception
    shown = [p.proto.text for p in at.get("progress")] + [i.value for i in at.info]
    assert any("AdvFT m=50 then knockoff" in t for t in shown), shown
    at.button(key="a_stop").click().run()
    time.sleep(1)
    at.run()
    assert saved_rows(tmp_path) == []  # neither stopped task left a row


def test_dfme_budget_below_one_iteration_is_a_readable_error(page, tmp_path):
    at = page
    at.radio(key="a_attack").set_value("dfme")
    at.number_input(key="a_queries").set_value(100)
    at.button(key="a_launch").click().run()
    assert not at.exception
    assert any("DFME iteration costs" in e.value for e in at.error)
    assert saved_rows(tmp_path) == []
