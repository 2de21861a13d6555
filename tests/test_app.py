"""The Streamlit app, headless (streamlit.testing.v1.AppTest): presets, URL state, bad input, the
Runs page with real (tiny) runs, the background job, and the projection for wide models.
Live refresh needs a browser: see tests/test_browser.py."""

import json
import struct
import time

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.jobs import Job, JobSlots, JobSpec, new_run_dir
from app.state import UI_PRESETS, UIState, for_run
from core import figures as plots
from core.runs import RunDir
from core.training import RecordedRun, load_victim, new_trainer
from core.victims import victim_path
from tests.conftest import MNIST_VICTIM, ROOT, app_charts, tiny_config

ENTRY = str(ROOT / "streamlit_app.py")  # the app as users start it; the Defend page is its default


@pytest.fixture
def env(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def defend(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def number(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------- URL state


def test_url_state_round_trips_and_survives_bad_values():
    state = UIState.from_preset("paper", margin=42.5, seed=7, epoch=3, run="r1", view="simple")
    back, warnings = UIState.from_query(state.to_query())
    assert back == state and warnings == []

    bad, warnings = UIState.from_query({"preset": "nope", "margin": "-1", "epochs": "x", "lr_f": "7",
                                        "distance": "l3", "view": "tiny", "epoch": "-2", "run": "../etc"})
    assert bad == UIState.from_preset("lecture")
    assert len(warnings) == 8
    assert any("margin must be a finite number > 0" in w for w in warnings)  # core's own message
    assert any("lr_f must be in (0, 1]" in w for w in warnings)
    if not victim_path(UI_PRESETS["fig5"].victim).is_file():
        state, warnings = UIState.from_query({"preset": "fig5"})
        assert state.preset == "lecture" and "train-victim" in warnings[0]


def test_for_run_reopens_with_the_runs_own_settings():
    from core.runs import RunConfig

    saved = RunConfig.from_dict({"preset": "lecture", "victim": str(MNIST_VICTIM),
                                 "advft": {"margin": 3.0, "epochs": 2, "i_f": 7, "seed": 5}})
    state, warnings = for_run("r", saved)
    assert warnings == []
    assert (state.run, state.victim, state.margin, state.epochs, state.i_f, state.seed) == \
        ("r", "mnist_lenet2d", 3.0, 2, 7, 5)


# ---------------------------------------------------------------- Defend page


@pytest.mark.slow
def test_presets_fill_the_controls_and_the_url(env):
    at = defend()
    no_exception(at)
    assert number(at, "Margin m").value == 30.0 and number(at, "I_G (G steps/epoch)").value == 25
    from core.knobs import PAGE_KNOBS  # one widget per knob of the registry, keyed w_<name>

    widgets = {w.key for kind in ("number_input", "selectbox", "toggle", "text_input") for w in getattr(at, kind)}
    assert {f"w_{k.name}" for k in PAGE_KNOBS} <= widgets
    assert len(app_charts(at)) == 3  # Fig. 5 panels, generator grid, curves: drawn before any run
    at.selectbox(key="w_preset").set_value("paper").run()
    no_exception(at)
    assert number(at, "Margin m").value == 100.0
    assert number(at, "I_G (G steps/epoch)").value == 500
    assert number(at, "lr F").value == pytest.approx(1e-4)
    assert at.selectbox(key="w_fake_reduce").value == "median"
    assert at.query_params["preset"] == "paper" and at.query_params["margin"] == "100.0"
    # The Fig. 5 preset is offered only when its victim exists; else the command that trains it is shown.
    if not victim_path(UI_PRESETS["fig5"].victim).is_file():
        assert "fig5" not in at.selectbox(key="w_preset").options
        assert any("resnet18_2d" in c.value for c in at.code)


def test_url_configures_the_page_and_bad_values_warn(env):
    at = defend({"margin": "25", "seed": "3", "epochs": "abc", "preset": "bogus", "view": "simple"})
    no_exception(at)
    assert number(at, "Margin m").value == 25.0 and number(at, "Seed").value == 3
    assert number(at, "Epochs N").value == 15  # the bad value was replaced by the preset's ...
    texts = " ".join(w.value for w in at.warning)
    assert "epochs='abc' ignored" in texts and "preset 'bogus'" in texts  # ... and said so
    assert not any(w.label.startswith("I_G") for w in at.number_input)  # simple view hides the advanced knobs
    assert at.query_params["margin"] == "25.0" and at.query_params["view"] == "simple"


def test_out_of_range_input_shows_the_engines_message(env):
    at = defend()
    number(at, "Margin m").set_value(0.0).run()
    no_exception(at)
    assert any("margin must be a finite number > 0" in e.value for e in at.error)
    assert at.button(key="t_start").disabled


@pytest.mark.slow
def test_missing_dataset_falls_back_to_offline_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVFT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("ADVFT_RUNS_DIR", str(tmp_path / "runs"))
    at = defend({"preset": "lecture"})
    no_exception(at)
    assert at.selectbox(key="w_preset").value == "offline"
    assert at.selectbox(key="w_victim").value == "digits_lenet2d"
    assert any("Offline demo" in c.value and "MNIST is not available here" in c.value
               and "ADVFT_DATA_DIR=" in c.value for c in at.caption)
    assert not at.warning  # a one-line note, not a warning box
    assert len(app_charts(at)) == 3


@pytest.mark.slow
def test_start_records_a_run_and_reset_stops_it(env):
    at = defend({"epochs": "1", "i_g": "2", "i_f": "400", "seed": "1"})
    at.button(key="t_start").click().run()
    no_exception(at)
    deadline = time.time() + 90
    while not list(env.glob("*/snapshots/epoch_0000.pt")) and time.time() < deadline:
        time.sleep(0.2)
    run = RunDir(next(env.glob("*/snapshots/epoch_0000.pt")).parent.parent)
    assert run.config().advft.i_f == 400 and run.config().preset == "lecture"
    assert at.query_params["run"] == run.name  # the URL names the run: a reload reopens it
    at.button(key="t_reset").click().run()
    no_exception(at)
    while run.status()["status"] != "stopped" and time.time() < deadline:
        time.sleep(0.2)
    assert run.status()["status"] == "stopped" and "run" not in at.query_params


def test_reopening_a_deleted_or_corrupt_run_is_a_message(env, recorded_run):
    at = defend({"run": "no-such-run"})
    no_exception(at)
    assert any("no longer exists" in e.value for e in at.error)
    (recorded_run.path / "snapshots" / "epoch_0001.pt").write_bytes(b"not a torch file")
    at = defend({"run": recorded_run.name, "epoch": "1"})
    no_exception(at)
    assert any("epoch 1 snapshot does not load" in e.value for e in at.error)


# ---------------------------------------------------------------- Runs page


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist):
    """A real run folder made the way the app makes one (core.training's run protocol). Marked
    'stopped' rather than 'finished': finishing scores M_F on all 60k training images, which the
    page does not need and the suite cannot afford."""
    from core.data import Dataset

    model, data = load_victim(MNIST_VICTIM, None)
    small = Dataset("mnist", data.x_train[:2000], data.y_train[:2000], data.x_test[:1000], data.y_test[:1000],
                    data.source)  # each epoch scores M_F on the test set: 1k images keep the fixture quick
    trainer = new_trainer(model, small, tiny_config(), data_dir=None)
    recorded = RecordedRun.create(tmp_path_factory.mktemp("made") / "tiny-m10", str(MNIST_VICTIM), trainer.config,
                                  preset="lecture", trainer=trainer)
    while not trainer.finished:
        recorded.step()
    recorded.close("stopped", "stopped after epoch 1")
    return recorded.run


@pytest.fixture
def recorded_run(env, finished_run):
    import shutil

    shutil.copytree(finished_run.path, env / finished_run.name)
    return RunDir(env / finished_run.name)


def test_runs_page_lists_compares_and_survives_damage(env, recorded_run):
    import shutil

    twin = RunDir(env / "tiny-m20")
    shutil.copytree(recorded_run.path, twin.path)
    broken = RunDir(env / "broken")
    shutil.copytree(recorded_run.path, broken.path)
    (broken.path / "history.jsonl").write_text("{not json\n")

    at = AppTest.from_file(ENTRY, default_timeout=60).run()
    at.switch_page("app/pages/runs.py").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert set(table["run"]) == {"tiny-m10", "tiny-m20", "broken"}
    assert table.set_index("run").loc["tiny-m10", "status"] == "stopped"
    assert any("broken" in w.value and "does not read" in w.value for w in at.warning)

    at.multiselect(key="compare_pick").set_value(["tiny-m10", "tiny-m20"]).run()
    no_exception(at)
    assert len(app_charts(at)) == 2  # overlaid curves + final panels side by side

    (twin.path / "snapshots" / "epoch_0001.pt").write_bytes(b"\x00 truncated")  # damaged underneath
    at.run()
    no_exception(at)
    assert any("tiny-m20" in e.value and "does not load" in e.value for e in at.error)
    shutil.rmtree(twin.path)  # deleted underneath
    at.run()
    no_exception(at)
    assert "tiny-m20" not in set(at.dataframe[0].value["run"])

    at.selectbox(key="run_pick").set_value("tiny-m10").run()
    at.button(key="delete").click().run()
    assert recorded_run.path.exists()  # nothing deleted before the confirmation
    at.button(key="confirm_delete").click().run()
    no_exception(at)
    assert not recorded_run.path.exists()
    assert list(at.dataframe[0].value["run"]) == ["broken"]


# ---------------------------------------------------------------- jobs


def test_job_queue_pause_step_and_stop(env):
    slots = JobSlots(1)
    cfg = tiny_config(epochs=2, i_g=2, i_f=3)

    def job(**kw):
        return Job(JobSpec(str(MNIST_VICTIM), cfg, new_run_dir(env, "lecture", cfg), "lecture", **kw), slots)

    first, second = job(start_paused=True).start(), job().start()
    deadline = time.time() + 60
    while first.view().state != "paused" and time.time() < deadline:
        time.sleep(0.1)
    assert first.view().state == "paused" and first.view().snapshot is not None
    assert second.view().state == "queued" and second.view().place == 1  # one slot: the second waits

    version = first.view().version
    first.step("g")
    first.step("step")
    while first.view().version < version + 2 and time.time() < deadline:
        time.sleep(0.05)
    v = first.view()
    assert (v.manual_steps, v.g_done, v.state) == (1, 1, "paused")  # the extra G step is outside the schedule

    second.stop()  # stopping a queued job leaves the line
    second.thread.join(10)
    assert second.view().state == "stopped"
    first.stop()
    first.thread.join(30)
    assert first.view().state == "stopped"
    assert RunDir(first.spec.run_dir).status()["status"] == "stopped"


# ---------------------------------------------------------------- projection for wide models


def test_wide_model_panels_use_a_fixed_pca(mnist, cifar_probe):
    from core.advft import AdvFT
    from core.data import Dataset
    from core.models import build_model

    torch.manual_seed(0)
    wide = build_model("lenet", "mnist").eval()  # 500-D penultimate layer, untrained
    small = Dataset("mnist", mnist.x_train[:500], mnist.y_train[:500], mnist.x_test[:500], mnist.y_test[:500],
                    mnist.source)  # the wide model is slow on CPU; the projection needs few points
    trainer = AdvFT(wide, tiny_config(), small, cifar_probe)
    before = trainer.snapshot()
    trainer.step_model()
    after = trainer.snapshot()

    proj = plots.Projection(before.before.id, "pca")
    assert proj.kind == "pca" and proj.dim == 500
    ref = plots.panel_points(before, proj, "before")
    assert ref.id.shape == (50, 2) and ref.rays.shape == (10, 2)
    # Fitted once: projecting M_R's features again gives the same plane, whatever M_F does.
    assert (plots.panel_points(after, proj, "before").id == ref.id).all()
    ranges = plots.Ranges.around(ref.id, ref.ood, ref.gen)
    far = plots.panel_points(after, proj, "after").ood * 1e3
    assert ranges.extend("epoch 1", far) and ranges.extended_at == ["epoch 1"]
    fig = plots.fig5_panels(after, proj, ranges, mnist.classes)
    assert fig.layout.xaxis.range == fig.layout.xaxis2.range  # both panels share the fixed axes
    assert json.loads(fig.to_json())["data"]


@pytest.mark.slow
def test_live_refresh_matches_a_rebuild(mnist, victim, cifar_probe):
    """The live view swaps M_F's points into the figure instead of rebuilding it: same result."""
    from core.advft import AdvFT

    trainer = AdvFT(victim, tiny_config(), mnist, cifar_probe)
    first = trainer.snapshot()
    for _ in range(3):
        trainer.step_model()
    later = trainer.snapshot()
    proj = plots.Projection(first.before.id)
    ref = plots.panel_points(first, proj, "before")
    ranges = plots.Ranges.around(ref.id, ref.ood, ref.gen)
    live = plots.fig5_panels(first, proj, ranges, mnist.classes)
    plots.refresh_fig5(live, later, proj, ranges)
    rebuilt = plots.fig5_panels(later, proj, ranges, mnist.classes)
    assert live.to_json() == rebuilt.to_json()
    assert live.to_json() != plots.fig5_panels(first, proj, ranges, mnist.classes).to_json()


@pytest.mark.skipif(not plots.static_export_status()[0], reason="kaleido or Chromium not installed")
@pytest.mark.slow
def test_server_side_export_renders_the_fig5_panels(mnist_small, victim, cifar_probe):
    from core.advft import AdvFT

    snapshot = AdvFT(victim, tiny_config(), mnist_small, cifar_probe).snapshot()
    proj = plots.Projection(snapshot.before.id, "pca")
    points = plots.panel_points(snapshot, proj, "before")
    fig = plots.fig5_panels(snapshot, proj, plots.Ranges.around(points.id, points.ood, points.gen), mnist_small.classes,
                            style="presentation")
    png = plots.render_static(fig, "png", 800, 400, 3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (2400, 1200)
    svg = plots.render_static(fig, "svg", 800, 400, 3)
    assert b"<svg" in svg[:500]


@pytest.mark.skipif(not plots.static_export_status()[0], reason="kaleido or Chromium not installed")
def test_server_side_export_tries_again_and_fails_in_one_line(monkeypatch):
    """Kaleido's first render in a fresh tab can fail ("kaleido_scopes is not defined"): tried again; a render
    that keeps failing is one line, never Kaleido's raw DevTools object."""
    import plotly.graph_objects as go

    fig, real, calls = go.Figure(go.Scatter(x=[0, 1], y=[0, 1])), go.Figure.to_image, []
    raw = {"result": {"className": "ReferenceError", "description": "ReferenceError: kaleido_scopes is not defined\n  at <anonymous>:1:26"}}

    def first_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise Exception(raw)
        return real(self, *a, **k)

    monkeypatch.setattr(go.Figure, "to_image", first_fails)
    # a real first render can fail the same way (this test's process may start Kaleido here): then a third try
    assert plots.render_static(fig, "png", 200, 100, 1)[:8] == b"\x89PNG\r\n\x1a\n" and len(calls) >= 2
    monkeypatch.setattr(go.Figure, "to_image", lambda self, *a, **k: (_ for _ in ()).throw(Exception(raw)))
    with pytest.raises(RuntimeError) as failed:
        plots.render_static(fig, "png", 200, 100, 1)
    said = str(failed.value)
    assert "\n" not in said and "kaleido_scopes is not defined" in said and "{" not in said


def test_a_recorded_run_scrubs_frame_by_frame_and_replays(env, recorded_run):
    frames = recorded_run.frame_steps()
    assert len(frames) >= 2 and frames[0] == 0  # the run protocol writes frames, not only epoch snapshots
    at = defend({"run": recorded_run.name})
    no_exception(at)
    timeline = at.select_slider(key=f"timeline_{recorded_run.name}")
    assert timeline.options == ["start (M_F = M_R)", "end of epoch 1"]  # labels of the frames at steps 0 and 5
    assert timeline.value == f"frame:{frames[-1]}"
    timeline.set_value(f"frame:{frames[0]}").run()
    no_exception(at)
    assert "M_F, epoch 0" in json.dumps(next(iter(app_charts(at).values())))

    at.button(key="replay_play").click().run()
    seen = []
    for _ in range(len(frames) + 2):  # AppTest does not fire run_every: each run is one replay tick
        # While it replays, the timeline is a progress bar; the chart says which frame it draws.
        seen.append(next(iter(app_charts(at).values()))["layout"]["meta"]["step"])
        at.run()
        no_exception(at)
    assert seen[:len(frames)] == frames
    assert "replay" not in at.session_state  # the last frame ends the replay
    assert at.select_slider(key=f"timeline_{recorded_run.name}").value == f"frame:{frames[-1]}"  # a slider again


def test_recorded_runs_open_without_training_and_stay_small(env):
    from core.training import RECORDED_DIR, RECORDED_FRAMES, recorded_runs

    shipped = {r.name for r in recorded_runs()}
    assert {"recorded-lecture", "recorded-offline", "recorded-fig5"} <= shipped
    # three recordings of 24 frames; the two 2-D LeNets carry their M_F for the probe (~160 kB each)
    assert sum(p.stat().st_size for p in RECORDED_DIR.rglob("*") if p.is_file()) <= 3_300_000
    at = defend()
    no_exception(at)
    at.button(key="open_recorded-lecture").click().run()
    no_exception(at)
    assert at.query_params["run"] == "recorded-lecture"
    assert any("Recorded run" in i.value and "python -m core record --preset lecture" in i.value for i in at.info)
    timeline = at.select_slider(key="timeline_recorded-lecture")
    # Its frames, and the end of every epoch (a frame there, else the epoch's snapshot: ?epoch= links land).
    run = next(r for r in recorded_runs() if r.name == "recorded-lecture")
    per_epoch = run.config().advft.i_g + run.config().advft.i_f
    assert len(run.frame_steps()) == RECORDED_FRAMES
    assert len(timeline.options) == len(set(run.frame_steps()) | {e * per_epoch for e in run.snapshot_epochs()})
    assert [o for o in timeline.options if o.startswith("end of epoch") or o.startswith("start")] == \
        ["start (M_F = M_R)"] + [f"end of epoch {e}" for e in range(1, 16)]
    assert timeline.value.startswith("frame:")
    assert len(app_charts(at)) >= 3 and not list(env.glob("*/config.json"))  # drawn; no run trained


@pytest.mark.slow
def test_record_keeps_a_compact_copy_of_a_finished_run(recorded_run, tmp_path, monkeypatch):
    from core import advft
    from core.runs import RunError
    from core.training import RecordedRun, record

    with pytest.raises(RunError, match="has not finished"):
        record(recorded_run, tmp_path / "copy", "cmd")
    monkeypatch.setattr(advft.AdvFT, "metrics", lambda self: dict(self.history[-1], epochs_done=self.epoch))
    model, data = load_victim(MNIST_VICTIM, None)
    from core.data import Dataset

    small = Dataset("mnist", data.x_train[:500], data.y_train[:500], data.x_test[:500], data.y_test[:500], data.source)
    trainer = new_trainer(model, small, tiny_config(epochs=2, i_g=1, i_f=40), data_dir=None)
    done = RecordedRun.create(tmp_path / "done", "mnist_lenet2d", trainer.config, trainer=trainer)
    while not trainer.finished:
        done.step()
    done.close("finished")
    copy = record(done.run, tmp_path / "copy", "python -m core record --preset lecture", frames=4)
    # frames every 8 steps and at each epoch end (41, 82): 13 of them; 4 kept, evenly spaced
    assert copy.frame_steps() == [0, 32, 56, 82] and copy.snapshot_epochs() == [0, 1, 2]
    frame = copy.load_frame(82)
    assert frame.after.ood.dtype == torch.float16 and frame.labels.dtype == torch.uint8 and frame.history == ()
    assert len(copy.history()) == 3  # the curves come from history.jsonl
    # M_F kept in float16 (the app's probe runs it), small enough to ship; load_model gives float32 back
    from core.models import load_model
    from core.training import RECORDED_MODEL_BYTES

    kept = torch.load(copy.model_path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in kept.values() if v.is_floating_point())
    assert sum(v.numel() * v.element_size() for v in kept.values()) <= RECORDED_MODEL_BYTES
    assert next(load_model(copy.model_path).parameters()).dtype == torch.float32
    assert load_model(copy.model_path).info["protected_from"] == "mnist_lenet2d"  # a name, not this machine's path
    assert copy.summary().status == "finished"
