"""The AdvFT engine on the committed MNIST victim and real CIFAR-10 OOD probes."""

import pytest
import torch

from core.advft import AdvFT, ConfigError, TrainingDiverged
from tests.conftest import tiny_config


def make(victim, data, probe, **kw):
    return AdvFT(victim, tiny_config(**kw), data, probe)


def test_head_is_frozen_bit_for_bit(victim, mnist_small, cifar_probe):
    t = make(victim, mnist_small, cifar_probe, epochs=2, lr_f=1e-2)
    head_before = t.model.head.weight.detach().clone()
    while not t.finished:
        t.step()
    assert t.finished and t.epoch == 2
    assert torch.equal(t.model.head.weight, head_before)
    assert torch.equal(t.model.head.weight, victim.head.weight)
    # ... while the feature extractor did move
    moved = [not torch.equal(a, b) for a, b in zip(t.model.body.parameters(), victim.body.parameters())]
    assert any(moved)


@pytest.mark.parametrize("distance", ["l2", "l2sq"])
def test_training_starts_from_identical_models(victim, mnist_small, cifar_probe, distance):
    t = make(victim, mnist_small, cifar_probe, distance=distance, i_g=0)
    x = mnist_small.x_test[:64].float() / 255
    assert torch.equal(t.model.features(x), t.reference.features(x))
    t.step_model()
    shift = (t.model.features(x) - t.reference.features(x)).norm(dim=1).mean().item()
    assert shift > 0


def test_same_seed_same_result_different_seed_differs(victim, mnist_small, cifar_probe):
    a, b, c = (make(victim, mnist_small, cifar_probe, seed=s) for s in (3, 3, 4))
    for t in (a, b, c):
        while not t.finished:
            t.step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert a.history[-1] == {**b.history[-1], "seconds": a.history[-1]["seconds"]}
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.model.parameters(), c.model.parameters()))


def test_resume_continues_exactly(victim, mnist_small, cifar_probe):
    straight = make(victim, mnist_small, cifar_probe, epochs=2)
    while not straight.finished:
        straight.step()
    first = make(victim, mnist_small, cifar_probe, epochs=2)
    first.run_epoch()
    state = first.state_dict()
    resumed = make(victim, mnist_small, cifar_probe, epochs=2)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    while not resumed.finished:
        resumed.step()
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.generator.parameters(), resumed.generator.parameters()):
        assert torch.equal(p, q)


def test_a_retuned_trainer_is_the_one_its_config_builds(victim, mnist_small, cifar_probe):
    """An app builds the trainer before Start (app.jobs.WorkerPool) with the knobs then on screen; retuned
    to the knobs at Start, it must train exactly as a trainer built with those from the start."""
    wanted = dict(margin=25.0, epochs=2, i_g=3, i_f=4, lr_f=3e-3, lr_schedule="cosine", fake_reduce="median")
    fresh = make(victim, mnist_small, cifar_probe, **wanted)
    early = make(victim, mnist_small, cifar_probe)
    early.retune(tiny_config(**wanted))
    for t in (fresh, early):
        while not t.finished:
            t.step()
    for p, q in zip(fresh.model.parameters(), early.model.parameters()):
        assert torch.equal(p, q)
    assert early.history[-1] == {**fresh.history[-1], "seconds": early.history[-1]["seconds"]}

    with pytest.raises(ConfigError, match="seed"):
        make(victim, mnist_small, cifar_probe).retune(tiny_config(seed=1))
    with pytest.raises(ConfigError, match="before the first step"):
        early.retune(tiny_config(**wanted))


def test_steps_follow_algorithm_order_and_stop(victim, mnist_small, cifar_probe):
    t = make(victim, mnist_small, cifar_probe, epochs=2, i_g=2, i_f=3)
    phases = []
    for _ in range(5):
        phases.append(t.phase)
        t.step()
    assert phases == ["G", "G", "F", "F", "F"]
    assert t.epoch == 1 and len(t.history) == 2  # epoch 0 baseline + epoch 1
    assert t.run_epoch(should_stop=lambda: True) is None and t.epoch == 1


def test_snapshot_has_what_a_plot_needs(victim, mnist_small, cifar_probe):
    t = make(victim, mnist_small, cifar_probe)
    s = t.snapshot()
    assert s.before.id.shape == (50, 2) and s.before.ood.shape == (50, 2)
    assert s.after.id.shape == s.before.id.shape and s.labels.shape == (50,)
    assert s.gen_images.dtype == torch.uint8 and s.gen_images.shape == (16, 1, 28, 28)
    assert s.head.shape == (10, 2)
    assert s.history[0]["epoch"] == 0 and s.history[0]["acc_after"] == s.history[0]["acc_before"]
    assert s.history[0]["kl_test"] == pytest.approx(0, abs=1e-9)
    back = type(s).from_dict(s.to_dict())  # how run folders store it
    assert torch.equal(back.after.ood, s.after.ood) and back.history == s.history


def test_non_finite_loss_stops_with_a_message(victim, mnist_small, cifar_probe):
    t = make(victim, mnist_small, cifar_probe)
    with torch.no_grad():
        next(t.model.body.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="lower the learning rates"):
        for _ in range(5):
            t.step()


def test_epoch_zero_record_matches_a_real_evaluation(victim, mnist_small, cifar_probe):
    t = make(victim, mnist_small, cifar_probe)
    measured = t.evaluator(t.model)
    for key, value in t.history[0].items():
        if key in measured:
            assert measured[key] == pytest.approx(value, abs=1e-6), key


def test_extra_updates_stay_out_of_the_epoch_means(victim, mnist_small, cifar_probe):
    plain = make(victim, mnist_small, cifar_probe, i_g=1, i_f=2)
    extra = make(victim, mnist_small, cifar_probe, i_g=1, i_f=2)
    plain.step()
    extra.step()
    extra.step_model()  # an extra M_F update outside the schedule ("step D")
    assert extra._sums == plain._sums and extra.g_done == 1 and extra.f_done == 0
