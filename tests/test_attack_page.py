"""The Attack page (AppTest): launch a tiny KnockoffNets attack, see its row; bad input is a message."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

ENTRY = str(ROOT / "streamlit_app.py")


@pytest.fixture
def page(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(ENTRY, default_timeout=120).run()
    at.switch_page("app/pages/attack.py").run()
    assert not at.exception
    return at


def test_tiny_attack_lands_in_the_table(page):
    at = page
    assert "original M_R · mnist_lenet2d" in at.selectbox(key="a_target").options
    at.selectbox(key="a_target").set_value("original M_R · mnist_lenet2d")
    at.number_input(key="a_queries").set_value(1000)
    at.button(key="a_launch").click().run()
    deadline = time.time() + 180
    while not at.session_state["attack_results"] and time.time() < deadline:
        time.sleep(2)
        at.run()
    assert not at.exception
    rows = at.session_state["attack_results"]
    assert len(rows) == 1
    row = rows[0]
    assert row["Q"] == 1000 and row["status"] == "finished" and row["defence"] == "none"
    assert row["Acc_MF"] == pytest.approx(row["Acc_MR"]) and row["KL_test"] == pytest.approx(0, abs=1e-9)
    assert row["curve"][-1]["queries"] == 1000 and 0 <= row["Acc_MS"] <= 1
    assert any("finished" in s.value for s in at.success)
    assert at.dataframe, "the results table is drawn"


def test_dfme_budget_below_one_iteration_is_a_readable_error(page):
    at = page
    at.radio(key="a_attack").set_value("dfme")
    at.number_input(key="a_queries").set_value(100)
    at.button(key="a_launch").click().run()
    assert not at.exception
    assert any("DFME iteration costs" in e.value for e in at.error)
    assert at.session_state["attack_results"] == []
