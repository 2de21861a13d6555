"""Black-box API, defences, KnockoffNets and DFME on real data (the committed MNIST victim, CIFAR-10 /
MNIST from $ADVFT_DATA_DIR), with budgets small enough for the suite."""

import json
import math

import pytest
import torch

from core.attacks import (AdaptiveMisinformation, AttackConfig, BlackBoxAPI, BudgetExhausted, DeceptivePerturbation,
                          DefenceConfig, example_images, make_api, run_attack, thief_view, thief_view_problem,
                          train_misinformation_model, transfer_pool)
from core.cli import main
from core.data import DATASETS, to_float
from core.metrics import outputs
from core.models import build_model
from tests.conftest import MNIST_VICTIM

# Tiny but real: 1,000 test images for scoring; CIFAR-10 queries; a few hundred training steps.
KO = dict(attack="knockoff", queries=2000, epochs=6, rounds=2, eval_size=1000)
DF = dict(attack="dfme", dfme_batch=32, gen_width=8, evals=2, eval_size=1000)


def test_query_counting_and_budget_are_exact(victim, mnist):
    api = BlackBoxAPI(victim, budget=10)
    x = to_float(mnist.x_test[:7])
    p = api.query(x)
    assert api.queries_used == 7 and api.remaining == 3 and p.shape == (7, 10)
    assert torch.allclose(p.sum(1), torch.ones(7))
    with pytest.raises(BudgetExhausted) as e:
        api.query(x[:4])  # 7 + 4 > 10: refused whole, nothing counted
    assert api.queries_used == 7 and "7 of 10 queries used" in str(e.value) and e.value.used == 7
    api.query(x[:3])
    assert api.remaining == 0
    api.respond(x)  # what honest users see: never counted
    assert api.queries_used == 10
    hard = BlackBoxAPI(victim, labels="hard").query(x)
    assert torch.equal(hard.sum(1), torch.ones(7)) and torch.equal(hard.argmax(1), p.argmax(1))
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_dp_keeps_top1_and_returns_a_different_distribution(victim, mnist, cifar_probe):
    dp = DeceptivePerturbation(0.7, 0.5)
    for x in (mnist.x_test[:500], cifar_probe.x):
        with torch.no_grad():
            logits = victim(to_float(x))
        p, q = logits.softmax(1), dp(None, logits)
        assert torch.isfinite(q).all() and (q >= 0).all()
        assert torch.allclose(q.sum(1), torch.ones(len(q)), atol=1e-5)
        assert torch.equal(q.argmax(1), p.argmax(1))
        change = (q - p).abs().max(1).values
        assert change.min() > 1e-3 and change.mean() > 0.05
    # the paper's DP figure: KL(P_R || P_DP) ~ 1.77 on confident outputs
    conf = torch.tensor([[1 - 9e-6] + [1e-6] * 9], dtype=torch.float64)
    out = dp.perturb(conf)
    assert abs(float((conf * (conf / out).log()).sum()) - 1.77) < 0.02
    # the reverse sigmoid lifts near-zero entries above a small top class: the guard restores top-1
    flat = torch.tensor([[0.2, 0.19] + [0.61 / 8 - 0.07] * 4 + [0.61 / 8 + 0.07] * 3 + [1e-9]], dtype=torch.float64)
    flat = flat / flat.sum()
    out = dp.perturb(flat)
    assert int(out.argmax()) == 0 and abs(float(out.sum()) - 1) < 1e-9
    # saturated inputs (exact 0 and 1) stay finite
    assert torch.isfinite(dp.perturb(torch.eye(10))).all()


@pytest.mark.slow
def test_am_switches_on_its_threshold(victim, mnist):
    mis = train_misinformation_model(victim, mnist, steps=100, seed=0)
    x = to_float(mnist.x_test[:300])
    wrong_answers = mis(x).argmax(1)
    assert (wrong_answers != mnist.y_test[:300]).float().mean() > 0.9  # trained to be wrong
    assert len(set(wrong_answers.tolist())) >= 5  # and not by collapsing every input onto one class
    with torch.no_grad():
        logits = victim(x)
    conf = logits.softmax(1).max(1).values
    threshold = float(conf.median())
    hard = AdaptiveMisinformation(mis, threshold, math.inf)
    out = hard(x, logits)
    low = conf < threshold
    assert torch.allclose(out[~low], logits.softmax(1)[~low]) and torch.allclose(out[low], mis(x).softmax(1)[low])
    smooth = AdaptiveMisinformation(mis, threshold, 50.0)
    a = smooth.alpha(torch.tensor([threshold - 0.2, threshold, threshold + 0.2]))
    assert a[0] > 0.99 and abs(float(a[1]) - 0.5) < 1e-6 and a[2] < 0.01
    assert torch.allclose(smooth(x, logits).sum(1), torch.ones(len(x)), atol=1e-5)


def test_defence_config_errors_are_readable():
    from core.advft import ConfigError

    with pytest.raises(ConfigError, match="unknown defence"):
        DefenceConfig(name="cip").validate()
    with pytest.raises(ConfigError, match="beta"):
        DefenceConfig(name="dp", dp_beta=0).validate()
    with pytest.raises(ConfigError, match="integer >= 1"):
        BlackBoxAPI(build_model("lenet2d", "mnist"), budget=0)
    with pytest.raises(ConfigError, match="iteration costs 896"):
        AttackConfig(attack="dfme", queries=800).validate()


@pytest.mark.parametrize("sampling, labels", [("random", "soft"), ("adaptive", "soft"), ("random", "hard"),
                                              ("adaptive", "hard")])
@pytest.mark.slow
def test_knockoff_end_to_end(victim, mnist, data_dir, sampling, labels):
    seen = []
    r = run_attack(victim, mnist, AttackConfig(**KO, sampling=sampling, labels=labels, seed=1), data_dir=data_dir,
                   progress=lambda res: seen.append((res.queries, res.done)))
    assert r.status == "finished" and r.queries == 2000 and r.labels == labels
    assert r.surrogate_acc > (0.3 if labels == "soft" else 0.15) and r.surrogate_best_acc >= r.surrogate_acc  # chance: 0.1
    assert 0 <= r.agreement <= 1 and r.surrogate_arch == "lenet5" and "CIFAR-10 train" in r.transfer_source
    assert [p["queries"] for p in r.curve] == [0, 1000, 2000] and seen[-1] == (2000, 1.0) and seen == sorted(seen)
    # the progress bar's share follows training, not only querying: reports in between, 2 rounds x 3 passes
    assert len({done for _, done in seen if 0 < done < 1}) >= 4
    if sampling == "adaptive":
        assert set(r.extra["policy"]) == set(DATASETS["cifar10"].classes)  # CIFAR-10's labels are the actions
        assert sum(r.extra["picks"].values()) == 2000
    json.loads(json.dumps(r.to_dict()))
    # The thief's view: both confusions over the scored test images, agreeing with the accuracies reported.
    view = r.thief_view
    assert thief_view_problem(view) is None and view["classes"] == list(mnist.classes)
    for key, acc in (("surrogate_confusion", r.surrogate_acc), ("target_confusion", r.target_acc)):
        counts = torch.tensor(view[key])
        assert int(counts.sum()) == view["images"] and float(counts.trace() / counts.sum()) == pytest.approx(acc)
        assert counts.sum(1).tolist() == torch.bincount(mnist.y_test[:view["images"]], minlength=10).tolist()
    ex = view["examples"]
    assert ex["truth"] == sorted(ex["truth"]) and set(ex["truth"]) == set(range(10))
    y = mnist.y_test[:view["images"]]
    firsts = [i for c in range(10) for i in (y == c).nonzero().flatten()[:2].tolist()]
    assert (torch.from_numpy(example_images(view).copy()) == mnist.x_test[firsts]).all()


def test_a_damaged_thief_view_is_named_not_drawn(victim, mnist):
    n = 300
    target = outputs(victim, mnist.x_test[:n])[1]
    view = thief_view(mnist.x_test[:n], mnist.y_test[:n], target, -target, mnist.classes)
    assert thief_view_problem(view) is None
    assert sum(map(sum, view["surrogate_confusion"])) - sum(view["surrogate_confusion"][c][c] for c in range(10)) > 0.8 * n
    damaged = [({**view, "classes": "0123456789"}, "'classes'"),
               ({**view, "target_confusion": view["target_confusion"][:9]}, "'target_confusion' is not a 10 x 10"),
               ({**view, "surrogate_confusion": [[-1] * 10] * 10}, "'surrogate_confusion'"),
               ({**view, "examples": {**view["examples"], "pixels": "not base64!"}}, "not base64"),
               ({**view, "examples": {**view["examples"], "shape": [20, 1, 28, 27]}}, "bytes, not the"),
               ({**view, "examples": {**view["examples"], "surrogate": [10] * 20}}, "'examples.surrogate'"),
               ([], "not an object")]
    for bad, says in damaged:
        assert says in (thief_view_problem(bad) or ""), says


def test_knockoff_is_deterministic_and_falls_back_offline(victim, mnist, tmp_path):
    cfg = AttackConfig(**{**KO, "queries": 300, "epochs": 2, "eval_size": 200})
    a, b = (run_attack(victim, mnist, cfg, data_dir=tmp_path) for _ in range(2))  # no CIFAR-10 in tmp_path
    assert "CIFAR-10 not found" in a.transfer_source and "k-means" in a.transfer_source
    assert a.curve[-1]["acc"] == b.curve[-1]["acc"]
    assert all(torch.equal(p, q) for p, q in zip(a.surrogate.state_dict().values(), b.surrogate.state_dict().values()))
    pool = transfer_pool("natural", mnist.shape, 50, seed=0)
    assert pool.take(torch.arange(5)).shape == (5, *mnist.shape) and len(set(pool.groups.tolist())) > 1


@pytest.mark.parametrize("labels", ["soft", "hard"])
@pytest.mark.slow
def test_dfme_end_to_end_with_exact_accounting(victim, mnist, labels):
    # iterations of 32 x (1 x 2 + 5) queries; soft needs ~150 before the student leaves its first
    # one-class answer on the committed victim (17% at 150, 19% at 300), hard is checked differently
    n = 300 if labels == "soft" else 60
    cfg = AttackConfig(**DF, labels=labels, queries=n * 224 + 100)
    assert cfg.queries_per_iteration == 224
    api = make_api(victim, DefenceConfig(), labels, cfg.queries)
    from core.attacks import dfme

    r = dfme(api, mnist, cfg)
    assert r.queries == api.queries_used == n * 224 and r.extra["iterations"] == n
    assert [p["queries"] for p in r.curve] == [0, n // 2 * 224, n * 224]
    if labels == "soft":
        assert r.surrogate_best_acc > 0.15, r.curve  # chance is 0.1
    else:
        # hard labels do not beat chance at this budget (G collapses onto one class, see dfme's docstring);
        # what must hold is that the student learned the victim's labels on the queries it was trained on
        samples = torch.tensor(r.extra["samples"]).float() / 255
        with torch.no_grad():
            assert (r.surrogate(samples).argmax(1) == victim(samples).argmax(1)).float().mean() >= 0.5
    assert len(r.extra["samples"]) == 16


def test_attack_behind_a_defence_and_stop_keeps_partial_curve(victim, mnist, data_dir):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 40  # part-way through the second round

    r = run_attack(victim, mnist, AttackConfig(**{**KO, "rounds": 4}), DefenceConfig(name="dp"), data_dir, should_stop=stop)
    assert r.status == "stopped" and r.defence == "dp" and 0 < r.queries < 2000
    assert len(r.curve) >= 2 and r.curve[-1]["queries"] == r.queries and r.surrogate is not None


def test_cli_attack_writes_result(tmp_path, capsys, data_dir):
    out = tmp_path / "a"
    code = main(["attack", "--target", str(MNIST_VICTIM), "--attack", "knockoff", "--labels", "hard", "--queries", "500",
                 "--defence", "dp", "--seed", "0", "--rounds", "2", "--eval-size", "1000", "--out", str(out),
                 "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 0, err
    res = json.loads((out / "result.json").read_text())
    for key in ("surrogate_acc", "surrogate_best_acc", "agreement", "queries", "curve", "seconds", "config"):
        assert key in res
    assert res["queries"] == 500 and res["defence"] == "dp" and res["config"]["labels"] == "hard"
    assert [p["queries"] for p in res["curve"]] == [0, 250, 500]
    from core import load_model

    assert load_model(out / "surrogate.pt").arch == "lenet5"


@pytest.mark.parametrize("args, message", [
    (["--queries", "0"], "must be >= 1"),
    (["--attack", "jbda"], "invalid choice"),
    (["--defence", "cip"], "invalid choice"),
])
def test_cli_bad_arguments(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["attack", "--target", str(MNIST_VICTIM), *args, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, data_dir):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    cases = [
        (["--target", str(junk)], "not a readable checkpoint"),
        (["--target", str(tmp_path / "none.pt")], "no checkpoint"),
        (["--target", str(MNIST_VICTIM), "--transfer", str(tmp_path / "imagenet.npz")], "transfer set"),
        (["--target", str(MNIST_VICTIM), "--queries", "60000"], "fewer than the 60000 queries"),
        (["--target", str(MNIST_VICTIM), "--attack", "dfme", "--queries", "500"], "iteration costs"),
    ]
    for args, message in cases:
        out = tmp_path / "o"
        code = main(["attack", *args, "--out", str(out), "--data-dir", str(data_dir)])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0] and err.splitlines()[-1] == errors[0], err
        assert not out.exists()
