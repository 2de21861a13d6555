"""The one run protocol (core.training): every exit path records exactly one final status, for each of
its three callers (the CLI, the experiments, the app's job); one writer per run folder; a run that
never saved an epoch resumes from epoch 0; the library does not import its command line."""

import ast
import json
import time
from pathlib import Path

import pytest

from app.jobs import Job, JobSlots, JobSpec
from core import advft
from core.cli import main
from core.experiments import protect
from core.runs import RunBusy, RunDir
from core.training import RecordedRun, drive
from tests.conftest import MNIST_VICTIM, ROOT, tiny_config


def status(out) -> dict:
    return json.loads((Path(out) / "status.json").read_text())


REAL_STEP = advft.AdvFT.step


def boom_after(monkeypatch, steps: int, error: BaseException):
    """Make the engine raise `error` at its step number `steps` (0-based)."""
    real = REAL_STEP
    count = {"n": 0}

    def step(self):
        count["n"] += 1
        if count["n"] > steps:
            raise error
        return real(self)

    monkeypatch.setattr(advft.AdvFT, "step", step)


@pytest.fixture
def trainer(victim, mnist_small, cifar_probe):
    return advft.AdvFT(victim, tiny_config(epochs=2, i_g=1, i_f=2), mnist_small, cifar_probe)


# ---------------------------------------------------------------- drive() itself


def test_drive_finishes_and_writes_metrics(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(advft.AdvFT, "metrics", lambda self: dict(self.history[-1], epochs_done=self.epoch))
    run = RecordedRun.create(tmp_path / "r", str(MNIST_VICTIM), trainer.config, trainer=trainer)
    assert status(tmp_path / "r")["status"] == "running" and run.run.is_locked()
    assert drive(run) == "finished"
    assert status(tmp_path / "r")["status"] == "finished" and (tmp_path / "r" / "metrics.json").is_file()
    assert not run.run.is_locked()  # the lock goes with the run's end
    assert run.run.summary().epoch == 2 and run.run.snapshot_epochs() == [0, 1, 2]



def test_status_json_says_where_the_run_is_in_the_pages_words(trainer, tmp_path, monkeypatch):
    """status.json follows the run epoch by epoch, worded as the timeline and the charts word it."""
    monkeypatch.setattr(advft.AdvFT, "metrics", lambda self: dict(self.history[-1], epochs_done=self.epoch))
    run = RecordedRun.create(tmp_path / "r", str(MNIST_VICTIM), trainer.config, trainer=trainer)
    assert status(tmp_path / "r") == {"status": "running", "message": "start (M_F = M_R)"}
    seen = []
    drive(run, on_step=lambda action, record: seen.append(status(tmp_path / "r")["message"]) if record else None)
    assert seen == ["end of epoch 1 of 2", "end of epoch 2 of 2"]
    assert status(tmp_path / "r") == {"status": "finished", "message": "end of epoch 2 of 2"}


def test_one_wording_of_the_epoch_shown():
    per_epoch = 175  # the lecture preset: 25 G + 150 F steps
    assert advft.epoch_label(0, per_epoch) == "start (M_F = M_R)"
    assert advft.epoch_label(99, per_epoch) == "epoch 1 · step 99"  # the first epoch, in progress
    assert advft.epoch_label(350, per_epoch, 15) == "end of epoch 2 of 15"
    assert advft.epoch_label(390, per_epoch, 15) == "epoch 3 of 15 · step 40"

@pytest.mark.slow
def test_drive_records_stop_failure_and_interrupt(victim, mnist_small, cifar_probe, tmp_path, monkeypatch):
    def fresh(name):
        t = advft.AdvFT(victim, tiny_config(epochs=2, i_g=1, i_f=2), mnist_small, cifar_probe)
        return RecordedRun.create(tmp_path / name, str(MNIST_VICTIM), t.config, trainer=t)

    run = fresh("stopped")
    steps = iter(["step", "step", None])
    assert drive(run, lambda: next(steps)) == "stopped"
    assert status(tmp_path / "stopped")["status"] == "stopped" and not run.run.is_locked()

    boom_after(monkeypatch, 4, RuntimeError("CUDA out of memory. Tried to allocate 7.00 GiB\nmore lines"))
    run = fresh("failed")
    with pytest.raises(RuntimeError):
        drive(run)
    st = status(tmp_path / "failed")
    assert st["status"] == "failed" and st["message"] == "CUDA out of memory. Tried to allocate 7.00 GiB"
    assert run.run.summary().epoch == 1 and not run.run.is_locked()  # epoch 1 was recorded before

    boom_after(monkeypatch, 1, KeyboardInterrupt())
    run = fresh("interrupted")
    with pytest.raises(KeyboardInterrupt):
        drive(run)
    assert status(tmp_path / "interrupted")["status"] == "stopped"


def test_deleting_a_linked_run_removes_the_link_only_and_says_so(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "linked").symlink_to(elsewhere)
    said = RunDir(tmp_path / "runs" / "linked").delete()
    assert "Removed the link 'linked'" in said and str(elsewhere) in said
    assert not (tmp_path / "runs" / "linked").exists() and (elsewhere / "config.json").is_file()
    (tmp_path / "runs" / "plain").mkdir()
    assert RunDir(tmp_path / "runs" / "plain").delete() == "Deleted plain"
    assert not (tmp_path / "runs" / "plain").exists()


def test_one_writer_per_run_folder_and_deletion_waits(trainer, tmp_path):
    run = RecordedRun.create(tmp_path / "r", str(MNIST_VICTIM), trainer.config, trainer=trainer)
    with pytest.raises(RunBusy):
        RecordedRun.resume(tmp_path / "r")  # a second writer (another tab, another process) is refused
    with pytest.raises(RunBusy):
        RunDir(tmp_path / "r").delete()
    assert RunDir(tmp_path / "r").status()["status"] == "running"
    run.close("stopped")
    assert RunDir(tmp_path / "r").status()["status"] == "stopped"


def test_a_run_left_running_reads_as_interrupted(trainer, tmp_path):
    run = RecordedRun.create(tmp_path / "r", str(MNIST_VICTIM), trainer.config, trainer=trainer)
    run.run.release()  # what the OS does when the writing process is killed
    summary = RunDir(tmp_path / "r").summary()
    assert summary.status == "interrupted" and summary.resumable and "resumed" in summary.message


# ---------------------------------------------------------------- the three callers


TINY = ["--epochs", "2", "--ig", "1", "--if", "2", "--batch-size", "16"]


def test_cli_records_an_unexpected_failure_and_resumes_from_scratch(tmp_path, capsys, small_data_dir, monkeypatch):
    out = tmp_path / "run"
    boom_after(monkeypatch, 1, RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"))
    code = main(["advft", "--victim", str(MNIST_VICTIM), *TINY, "--out", str(out), "--data-dir", str(small_data_dir)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "not enough memory" in errors[0], err
    assert status(out)["status"] == "failed" and not (out / "state.pt").exists()
    # No epoch was saved: the folder is not stuck, --resume starts the run again from epoch 0.
    (out / ".state.pt.abc.tmp").write_bytes(b"half a file")  # a writer killed mid-write leaves one
    monkeypatch.undo()
    code = main(["advft", "--resume", "--out", str(out), "--data-dir", str(small_data_dir)])
    assert code == 0, capsys.readouterr().err
    assert status(out)["status"] == "finished" and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_experiments_record_finished_stopped_and_failed(victim, mnist_small, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(advft.AdvFT, "metrics", lambda self: dict(self.history[-1], epochs_done=self.epoch))
    cfg = tiny_config(epochs=2, i_g=1, i_f=2)
    assert protect(victim, mnist_small, cfg, tmp_path / "done", "mnist_lenet2d", data_dir).status == "finished"
    assert status(tmp_path / "done")["status"] == "finished"

    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    run = protect(victim, mnist_small, cfg, tmp_path / "stopped", "mnist_lenet2d", data_dir, should_stop=stop_after_three)
    assert run.status == "stopped" and status(tmp_path / "stopped")["status"] == "stopped"

    boom_after(monkeypatch, 2, advft.TrainingDiverged("L_F became nan at epoch 1; lower the learning rates"))
    with pytest.raises(advft.TrainingDiverged):
        protect(victim, mnist_small, cfg, tmp_path / "failed", "mnist_lenet2d", data_dir)
    assert status(tmp_path / "failed") == {"status": "failed",
                                           "message": "L_F became nan at epoch 1; lower the learning rates"}


def _job(tmp_path, name, data_dir, **kw) -> Job:
    spec = JobSpec(str(MNIST_VICTIM), tiny_config(epochs=2, i_g=1, i_f=2), tmp_path / name, "lecture",
                   str(data_dir), **kw)
    return Job(spec, JobSlots(1)).start()


def _wait(job: Job, states, seconds=60) -> None:
    deadline = time.time() + seconds
    while job.view().state not in states and time.time() < deadline:
        time.sleep(0.05)
    assert job.view().state in states, job.view()


@pytest.mark.slow
def test_app_job_records_finished_stopped_and_failed(tmp_path, small_data_dir):
    """The job trains in a child process (a fresh interpreter: nothing can be monkeypatched into it), so
    its failures here are real ones: a victim that does not load, a run folder deleted underneath."""
    job = _job(tmp_path, "done", small_data_dir)
    _wait(job, ("finished",))
    assert status(tmp_path / "done")["status"] == "finished" and "Acc_MF" in job.view().message
    job.thread.join(30)
    assert job.process.returncode == 0 and RunDir(tmp_path / "done").frame_steps()  # frames for the timeline

    job = _job(tmp_path, "stopped", small_data_dir, start_paused=True)
    _wait(job, ("paused",))
    job.stop()
    job.thread.join(30)
    assert job.view().state == "stopped" and status(tmp_path / "stopped")["status"] == "stopped"

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    spec = JobSpec(str(junk), tiny_config(), tmp_path / "bad-victim", data_dir=str(small_data_dir))
    job = Job(spec, JobSlots(1)).start()
    _wait(job, ("failed",))
    assert "not a readable checkpoint" in job.view().message and not (tmp_path / "bad-victim").exists()

    job = _job(tmp_path, "deleted", small_data_dir, start_paused=True)
    _wait(job, ("paused",))
    import shutil

    shutil.rmtree(tmp_path / "deleted")  # by hand, underneath the live job
    job.step("epoch")
    _wait(job, ("failed",))
    assert "was deleted" in job.view().message


def test_a_spare_process_builds_the_next_trainer_before_start(tmp_path, small_data_dir):
    """The spare builds the Warmup the page sent (a newer one replaces it unbuilt); a Start with other
    training knobs reuses it, retuned; other build settings (the seed) build afresh."""
    from multiprocessing import Pipe

    from app.jobs import Warmup
    from app.worker import Runner, _wait_for_spec

    def warm(**kw):
        return Warmup(str(MNIST_VICTIM), tiny_config(**kw), str(small_data_dir))

    receive, send = Pipe(duplex=False)
    send.send(("warm", warm(seed=7)))  # replaced at once by the next wish: never built
    send.send(("warm", warm(margin=3.0)))
    spec = JobSpec(str(MNIST_VICTIM), tiny_config(margin=25.0, epochs=2), tmp_path / "run", "lecture",
                   str(small_data_dir))
    send.send(("spec", spec))
    got, built = _wait_for_spec(receive)
    assert got == spec and built[0] == warm(margin=3.0).key() == Warmup.of(spec).key()
    trainer = Runner(got, None, built)._prebuilt()
    assert trainer is built[1] and trainer.config == spec.config and trainer.steps_done == 0

    other = JobSpec(**{**spec.__dict__, "config": tiny_config(seed=1)})
    assert Runner(other, None, built)._prebuilt() is None


def test_a_job_stopped_in_the_queue_leaves_no_folder(tmp_path, small_data_dir):
    slots = JobSlots(1)
    blocker = Job(JobSpec(str(MNIST_VICTIM), tiny_config(), tmp_path / "first", data_dir=str(small_data_dir),
                          start_paused=True), slots).start()
    (tmp_path / "second").mkdir()  # as new_run_dir reserves it
    waiting = Job(JobSpec(str(MNIST_VICTIM), tiny_config(), tmp_path / "second", data_dir=str(small_data_dir)),
                  slots).start()
    _wait(waiting, ("queued",))
    waiting.stop()
    waiting.thread.join(10)
    blocker.stop()
    blocker.thread.join(30)
    assert waiting.view().state == "stopped" and not (tmp_path / "second").exists()


# ---------------------------------------------------------------- module structure


def _imports(path: Path) -> set[str]:
    """The core modules a core module imports (relative `from .x import` or `core.x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("core."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("core."))
    return found


def test_core_has_no_import_cycle_and_only_main_imports_the_cli():
    modules = {p.stem: _imports(p) for p in (ROOT / "core").glob("*.py")}
    assert {m for m, deps in modules.items() if "cli" in deps} == {"__main__"}
    assert not any("import streamlit" in p.read_text() for p in (ROOT / "core").glob("*.py"))

    def visit(m, path):
        assert m not in path, f"import cycle: {' -> '.join(path + [m])}"
        for dep in modules.get(m, ()):
            visit(dep, path + [m])

    for m in modules:
        visit(m, [])
