"""The Attack page (AppTest): launch a tiny KnockoffNets attack, see its row (the `table` command's schema,
saved: a new tab lists it); Protect & attack uses the settings on screen; a stopped attack is no row;
bad input is a message. The work runs in the worker process, as in the app."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from app.tasks import load_results, save_result
from core.experiments import TABLE_COLUMNS
from tests.conftest import ROOT

ENTRY = str(ROOT / "streamlit_app.py")
pytestmark = pytest.mark.slow  # each launches real work in the worker process


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
    at.number_input(key="a_rounds").set_value(2)  # a point per round on the accuracy-vs-queries curve
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
    assert set(TABLE_COLUMNS) - {"method", "acc_ms_before", "acc_ms_before_final"} <= set(row)  # table's schema
    assert row["q"] == 1000 and row["status"] == "finished" and row["defence"] == "none" and row["m"] is None
    assert row["acc_mf"] == pytest.approx(row["acc_mr"]) and row["kl_test"] == pytest.approx(0, abs=1e-9)
    assert [p["queries"] for p in row["curve"]] == [0, 500, 1000]
    assert 0 <= row["acc_ms_after_final"] <= row["acc_ms_after"] <= 1
    assert any("finished" in s.value for s in at.success)
    assert at.dataframe, "the results table is drawn"
    # The thief's view of the one result, on both sides until a second attack is saved.
    assert any("thief's view" in h.value for h in at.subheader)
    assert at.selectbox(key="tv_left").value == at.selectbox(key="tv_right").value
    assert at.selectbox(key="tv_left").value.startswith("1. original M_R · mnist_lenet2d · unprotected · knockoff")
    table = open_page().dataframe[0].value  # a new tab (session) lists the saved result
    assert list(table["before: Q"]) == ["1,000"] and list(table["after: m"]) == ["-"]
    assert list(table["after: KL_test"]) == ["0"]
    # The unprotected target's row is its own "before" (as the none row of `table`).
    assert list(table["before: Acc_MS best"]) == list(table["after: Acc_MS best"])
    # A protected target's attack saved meanwhile (another tab): the view's right side moves to it.
    save_result(tmp_path / "runs" / ".attacks", {**row, "target": "AdvFT M_F · elsewhere", "m": 10.0, "n": 3})
    at.run()
    assert at.selectbox(key="tv_right").value.startswith("2. AdvFT M_F · elsewhere")
    assert at.selectbox(key="tv_left").value.startswith("1. original M_R")
    assert not at.warning and not at.exception


def wait_ended(at: AppTest, timeout: float = 600) -> str:
    """Rerun the page until its task has ended (its Stop button is gone); what the page says then. It waits
    for a state, not for a time: a task that ignored its stop would run on to 'finished' and save its row."""
    deadline = time.time() + timeout
    while any(b.key == "a_stop" for b in at.button) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    return " ".join(m.value for m in (*at.info, *at.success, *at.error))


def test_protect_and_attack_uses_the_settings_on_screen_and_a_stopped_attack_is_no_row(page, tmp_path):
    at = page
    # A KnockoffNets attack small enough to finish within the wait below were its stop ignored.
    at.number_input(key="a_queries").set_value(2000)
    at.button(key="a_launch").click().run()
    deadline = time.time() + 180
    while not any("queries" in p.proto.text for p in at.get("progress")) and time.time() < deadline:
        time.sleep(0.3)  # stopped once it is querying the API, so that the stop meets a running attack
        at.run()
    at.button(key="a_stop").click().run()
    said = wait_ended(at)
    assert "stopped" in said and "finished" not in said, said
    assert saved_rows(tmp_path) == []
    at.radio(key="a_attack").set_value("dfme")  # DFME chosen, not launched ...
    at.number_input(key="a_queries").set_value(100_000)
    at.radio(key="a_attack").set_value("knockoff")  # ... then KnockoffNets
    at.number_input(key="a_queries").set_value(2000)
    at.select_slider(key="p_margin").set_value(50.0)
    at.number_input(key="p_epochs").set_value(1)
    at.button(key="p_go").click().run()
    assert not at.exception
    shown = [p.proto.text for p in at.get("progress")] + [i.value for i in at.info]
    assert any("AdvFT m=50 then knockoff" in t for t in shown), shown
    at.button(key="a_stop").click().run()
    said = wait_ended(at)
    assert "stopped" in said and "finished" not in said, said
    assert saved_rows(tmp_path) == []  # neither stopped task left a row


def test_dfme_budget_below_one_iteration_is_a_readable_error(page, tmp_path):
    at = page
    at.radio(key="a_attack").set_value("dfme")
    at.number_input(key="a_queries").set_value(100)
    at.button(key="a_launch").click().run()
    assert not at.exception
    assert any("DFME iteration costs" in e.value for e in at.error)
    assert saved_rows(tmp_path) == []


def test_time_left_counts_the_pace_from_the_first_report_and_never_counts_down_to_a_wait():
    from app.views import time_left

    # 35 s of loading, then 3% in the next 6 s: about 3 minutes at that pace (the old estimate, from the
    # start, said 19 minutes)
    assert time_left((35.0, 0.0), 0.03, 41.0) == "about 3 min left"
    assert time_left((35.0, 0.0), 0.5, 65.0) == "about 30 s left"
    assert time_left((35.0, 0.0), 0.01, 36.0) == "estimating the time left…"
    assert time_left((35.0, 0.2), 0.21, 60.0) == "estimating the time left…"  # too little done since
    assert time_left((35.0, 0.0), 0.99, 80.0) == "finishing…"  # the final scoring reports no progress


def test_the_recordings_that_ship_their_m_f_can_be_attacked_without_training(tmp_path):
    from app.tasks import attack_targets
    from core.models import load_model

    targets = attack_targets(tmp_path / "no-runs-yet")
    lecture = targets["AdvFT M_F · recorded-lecture"]
    assert lecture["kind"] == "advft" and lecture["victim"] == "mnist_lenet2d"
    assert load_model(lecture["path"]).info["epochs_done"] == 15
    assert "AdvFT M_F · recorded-offline" in targets
    assert not any("recorded-fig5" in label for label in targets)  # its ResNet-18 is not shipped
