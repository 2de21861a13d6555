"""Animated export (core/animate.py, `python -m core animate`): the files are decoded and checked frame by
frame: how many frames, their size, that the axes stay put while the points move, that nothing falls off
the fixed axes. How long an export takes is bench/bench_animate.py's figure, never asserted here."""

import sys

import numpy as np
import pytest
from PIL import Image

from core.animate import AnimationError, AnimationSpec, animate, film, frame_count, renderer_for
from core.cli import main
from core.runs import RunDir
from core.training import RECORDED_DIR, RecordedRun, load_victim, new_trainer
from tests.conftest import tiny_config

LECTURE = RunDir(RECORDED_DIR / "recorded-lecture")


def gif_frames(data: bytes) -> tuple[list[np.ndarray], list[int]]:
    import io

    im = Image.open(io.BytesIO(data))
    frames, durations = [], []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
        durations.append(im.info["duration"])
    return frames, durations


@pytest.fixture(scope="module")
def lecture_gif():
    return animate(LECTURE, "gif", AnimationSpec(width=1200, style="presentation"))


def test_gif_of_the_recorded_lecture_run_has_every_frame_fixed_axes_and_moving_points(lecture_gif):
    frames, durations = gif_frames(lecture_gif.data)
    assert len(frames) == lecture_gif.frames == len(LECTURE.frame_steps()) == 24
    assert all(f.shape == frames[0].shape for f in frames) and frames[0].shape[1] == 1200
    assert len(lecture_gif.data) <= 5_000_000
    assert durations[:-1] == [250] * 23 and durations[-1] == 250 + 1500  # 4 frames/s, the last one held
    renderer = renderer_for(film(LECTURE), AnimationSpec())
    mr, mf = renderer.panels[0], renderer.panels[1]
    top, below = mr.box[1] // 2, (mr.box[1] + mr.box[2]) // 2
    # The axes do not move: M_R's tick labels (left of its plot) and every x tick label row are the same pixels
    # in every frame ...
    ticks_y = (slice(top, below), slice(0, mr.box[0] // 2))
    ticks_x = (slice(below + 2, below + 30), slice(0, frames[0].shape[1]))
    for f in frames[1:]:
        assert np.array_equal(f[ticks_y], frames[0][ticks_y]) and np.array_equal(f[ticks_x], frames[0][ticks_x])
    # ... while M_F's points do: its plot area changes from the first frame to the last, M_R's ID points do not.
    left, side = mf.box[0] // 2, mf.box[2] // 2
    plot_mf = (slice(top, below), slice(left, left + side))
    changed = np.any(frames[-1][plot_mf] != frames[0][plot_mf], axis=2).mean()
    assert changed > 0.02, f"only {changed:.1%} of M_F's plot changed over the run"
    # an opaque white background (presentation style), readable on a dark slide
    assert tuple(frames[0][2, 2]) == (255, 255, 255)


def test_the_fixed_axes_hold_every_frames_points():
    f = film(LECTURE)
    renderer = renderer_for(f, AnimationSpec())
    (x0, x1), (y0, y1) = renderer.ranges.x, renderer.ranges.y
    for snap in f.snapshots:
        for which in (snap.before, snap.after):
            for pts in (which.id, which.ood, which.gen):
                xy = renderer.proj(pts.float().numpy())
                assert x0 <= xy[:, 0].min() and xy[:, 0].max() <= x1 and y0 <= xy[:, 1].min() and xy[:, 1].max() <= y1


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_video_exports_decode_to_every_frame(fmt):
    av = pytest.importorskip("av")  # requirements-test.txt installs it; the app and the GIF never need it
    import io

    anim = animate(RunDir(RECORDED_DIR / "recorded-offline"), fmt, AnimationSpec(fps=6, width=960, hold_s=0.5))
    with av.open(io.BytesIO(anim.data)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert stream.codec_context.name == {"mp4": "h264", "webm": "vp9"}[fmt]
    assert len(decoded) == 24 + 3  # every frame, then the last one held for 0.5 s at 6 frames/s
    assert decoded[0].shape[:2] == (anim.size[1], anim.size[0]) and anim.size[0] == 960
    assert np.abs(decoded[-1].astype(int) - decoded[0].astype(int)).mean() > 0.5  # it moves


def test_cli_animate_writes_what_it_is_asked_for(tmp_path, capsys):
    out = tmp_path / "slides" / "fig5.gif"
    code = main(["animate", "recorded-offline", "--out", str(out), "--fps", "8", "--width", "800", "--panels",
                 "mr,mf", "--style", "screen", "--frames", "12", "--hold", "0"])
    assert code == 0, capsys.readouterr().err
    frames, durations = gif_frames(out.read_bytes())
    assert len(frames) == 12 and frames[0].shape[1] == 800 and set(durations) == {120}  # a GIF counts in 1/100 s
    assert "12 frames, 800x" in capsys.readouterr().out


@pytest.mark.parametrize("argv, said", [
    (["--out", "{tmp}/fig5.png"], "name the file .gif, .mp4 or .webm"),
    (["--out", "{tmp}/fig5.gif", "--panels", "mr,sideways"], "panels must be distinct names from mr, mf, zoom"),
    (["--out", "{tmp}/fig5.gif", "--fps", "0"], "frame rate must be from 0.5 to 30"),
])
def test_cli_animate_refuses_bad_input_in_one_line(tmp_path, capsys, argv, said):
    code = main(["animate", "recorded-lecture", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and said in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_cli_animate_names_the_runs_it_knows(tmp_path, capsys):
    code = main(["animate", "no-such-run", "--out", str(tmp_path / "a.gif"), "--runs-dir", str(tmp_path)])
    assert code == 2 and "recorded-lecture" in capsys.readouterr().err


def test_video_without_pyav_says_how_to_get_it_and_the_gif_still_works(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError, as where it is not installed
    with pytest.raises(AnimationError, match="requirements-video.txt"):
        animate(LECTURE, "mp4")
    assert main(["animate", "recorded-lecture", "--out", str(tmp_path / "a.webm")]) == 2
    assert "pip install -r requirements-video.txt" in capsys.readouterr().err
    assert main(["animate", "recorded-lecture", "--out", str(tmp_path / "a.gif"), "--frames", "3"]) == 0


def test_a_run_of_this_machine_animates_from_its_frames(tmp_path):
    """A run folder as the app and the CLI write it (not a recording): its frames, labelled as the timeline does."""
    model, data = load_victim("digits_lenet2d", None)
    trainer = new_trainer(model, data, tiny_config(epochs=2, i_g=1, i_f=15), data_dir=None)
    run = RecordedRun.create(tmp_path / "run", "digits_lenet2d", trainer.config, trainer=trainer)
    while not trainer.finished:
        run.step()
    run.close("finished")
    f = film(run.run)
    assert [s.step for s in f.snapshots] == run.run.frame_steps() == [0, 8, 16, 24, 32]
    assert f.labels[0] == "start (M_F = M_R)" and f.labels[2] == "end of epoch 1" and f.labels[3] == "epoch 2 · step 8"
    frames, _ = gif_frames(animate(run.run, "gif", AnimationSpec(width=640, panels=("mf",))).data)
    assert len(frames) == 5 and frames[0].shape[1] == 640


def test_a_run_without_two_frames_is_refused_in_one_line_that_says_why(tmp_path, capsys):
    model, data = load_victim("digits_lenet2d", None)
    trainer = new_trainer(model, data, tiny_config(epochs=2, i_g=1, i_f=15), data_dir=None)
    run = RecordedRun.create(tmp_path / "fresh", "digits_lenet2d", trainer.config, trainer=trainer)
    run.close("stopped")
    assert frame_count(run.run) < 2
    with pytest.raises(AnimationError, match="an animation needs two or more"):
        film(run.run)
    assert main(["animate", str(tmp_path / "fresh"), "--out", str(tmp_path / "a.gif")]) == 2
    err = capsys.readouterr().err
    assert "'fresh' has" in err and err.count("\n") == 1 and not (tmp_path / "a.gif").exists()
