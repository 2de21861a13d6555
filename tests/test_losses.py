"""The loss functions against values worked out by hand."""

import math

import pytest
import torch

from core.advft import EPS, feature_distance, fine_tune_loss, generator_loss


def test_distances_by_hand():
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # row 0: difference (3, 4) -> L2 5, squared 25 (plus the eps shift of PairwiseDistance)
    l2 = feature_distance(a, b, "l2")
    sq = feature_distance(a, b, "l2sq")
    assert l2[0].item() == pytest.approx(math.hypot(3 + EPS, 4 + EPS), rel=1e-6)
    assert sq[0].item() == pytest.approx((3 + EPS) ** 2 + (4 + EPS) ** 2, rel=1e-6)
    # row 1: identical features -> only the eps shift remains
    assert l2[1].item() == pytest.approx(math.sqrt(2) * EPS, rel=1e-3)
    assert sq[1].item() == pytest.approx(2 * EPS**2, rel=1e-3)


def test_generator_loss_is_mean_distance():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    r = torch.zeros(2, 2)
    assert generator_loss(f, r, "l2").item() == pytest.approx(1.5, abs=1e-5)      # (1 + 2) / 2
    assert generator_loss(f, r, "l2sq").item() == pytest.approx(2.5, abs=1e-5)    # (1 + 4) / 2


def test_fine_tune_loss_by_hand():
    # ID distances 1 and 3 (mean 2); fake distances 1, 2, 9 (mean 4, median 2); margin 5
    f_id, r_id = torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.zeros(2, 2)
    f_fk, r_fk = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 9.0]]), torch.zeros(3, 2)
    total, l1, l2 = fine_tune_loss(f_id, r_id, f_fk, r_fk, margin=5.0, form="l2", fake_reduce="mean")
    assert l1.item() == pytest.approx(2 - 4 + 5, abs=1e-4)
    assert l2.item() == pytest.approx(2, abs=1e-4)
    assert total.item() == pytest.approx(5, abs=1e-4)
    _, l1_med, _ = fine_tune_loss(f_id, r_id, f_fk, r_fk, margin=5.0, form="l2", fake_reduce="median")
    assert l1_med.item() == pytest.approx(2 - 2 + 5, abs=1e-4)
    # squared form: ID (1 + 9) / 2 = 5; fake (1 + 4 + 81) / 3 = 28.67; hinge inactive at m = 5
    total, l1, l2 = fine_tune_loss(f_id, r_id, f_fk, r_fk, margin=5.0, form="l2sq")
    assert l1.item() == 0.0
    assert total.item() == pytest.approx(5, abs=1e-3)


def test_hinge_is_zero_once_fake_exceeds_id_by_the_margin():
    f_id, r_id = torch.zeros(4, 2), torch.zeros(4, 2)
    f_fk, r_fk = torch.full((4, 2), 10.0), torch.zeros(4, 2)  # distance 14.14
    _, l1, _ = fine_tune_loss(f_id, r_id, f_fk, r_fk, margin=14.0, form="l2")
    assert l1.item() == 0.0
    _, l1, _ = fine_tune_loss(f_id, r_id, f_fk, r_fk, margin=15.0, form="l2")
    assert l1.item() == pytest.approx(15 - math.sqrt(200), abs=1e-3)


@pytest.mark.parametrize("form", ["l2", "l2sq"])
def test_gradient_is_nonzero_at_identical_features(form):
    """Where M_F = M_R all distances are zero; the loss must still give M_F a push."""
    f = torch.zeros(4, 2, requires_grad=True)
    total, _, _ = fine_tune_loss(f[:2], torch.zeros(2, 2), f[2:], torch.zeros(2, 2), margin=1.0, form=form)
    total.backward()
    assert f.grad.abs().sum().item() > 0


def test_the_head_sees_only_the_shift_in_its_row_space():
    from core.metrics import head_basis, shift_seen_by_head

    head = torch.nn.Linear(4, 2, bias=False)
    head.weight.data = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])  # logits read features 0 and 1 only
    basis = head_basis(head)
    ref = torch.zeros(3, 4)
    unseen = torch.tensor([[0, 0, 3.0, 4.0]] * 3)  # a shift of norm 5 that moves no logit
    seen = torch.tensor([[3.0, 4.0, 0, 0]] * 3)
    assert shift_seen_by_head(ref, unseen, basis) == pytest.approx(0, abs=1e-6)
    assert shift_seen_by_head(ref, seen, basis) == pytest.approx(5)
    assert shift_seen_by_head(ref, seen + unseen, basis) == pytest.approx(5)
    # the logits agree: what the head sees of a shift is what changes its answers
    assert torch.allclose(head(unseen), head(ref))
