"""Black-box model extraction: the victim's API, API-poisoning defences, KnockoffNets and DFME.

The thief only ever sees `BlackBoxAPI.query(x)`: probabilities ("soft") or one-hot top-1 labels
("hard"), every image counted against a budget. A defence sits between the model and the answer:
    none   the model's softmax
    dp     deceptive perturbation (Lee et al. 2019): reverse sigmoid on each probability,
           y' = y - beta * (sigmoid(gamma * logit(y)) - 1/2), renormalised; the top-1 class is kept
    am     adaptive misinformation, simplified (after Kariyappa & Qureshi, CVPR 2020): low-confidence
           (OOD-looking) queries get the answer of a model trained to be wrong, blended by a sigmoid of
           the confidence. Simplified: see AdaptiveMisinformation (shown as "AM (simplified)")
    top1   only the top-1 label is returned (the API answers "hard" whatever the thief asks for)
AdvFT needs no wrapper: its protected model M_F is put behind the API like any other, so
AdvFT + DP and the like just work.

Attacks (each returns an AttackResult, reports progress, and can be stopped):
    KnockoffNets (Orekondy et al. 2019): natural images (CIFAR-10 as the victim's input shape), chosen
        at random or by a gradient bandit over the pool's classes, answered by the API; the surrogate is
        trained with soft cross-entropy, for a fixed number of passes or (patience > 0) until its test
        accuracy stops improving.
    DFME (Truong et al. 2021): a generator G proposes queries; its gradient is estimated from the API's
        answers by forward differences (zeroth order); the student matches the victim with an L1 loss on
        mean-centred log-probabilities. Queries per iteration = batch x (g_iter x (m + 1) + d_iter).

Surrogate: "full" (default) = FULL_WIDTH[victim arch], the strong attacker; "same" = the victim's arch
(a 2-D bottleneck trains unreliably, hence not the default; for the full-width `lenet` both are `lenet`).
Every result records the final surrogate accuracy (surrogate_acc) and the best over training
(surrogate_best_acc, the protocol of the AdvFT, DFME and KnockoffNets papers).

No silent ID transfer sets: a KnockoffNets transfer set that is the victim's own training distribution
(the same named dataset, or an .npz whose images are copies of the victim's train/test images) is
refused with a ConfigError unless AttackConfig.allow_id_transfer; an allowed one is recorded in the
result (id_transfer). Nothing here knows about a UI.
"""

from __future__ import annotations

import base64
import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .advft import ConfigError, Generator
from .data import DATASETS, DataError, Dataset, check_images, convert_images, load_dataset, load_ood, nchw, to_float
from .errors import UserError
from .metrics import accuracy, agreement, confusion, outputs
from .models import FULL_WIDTH, Classifier, build_model

LABELS = ("soft", "hard")
DEFENCES = ("none", "dp", "am", "top1")
SAMPLINGS = ("random", "adaptive")
SURROGATES = ("full", "same")
PROB_CLAMP = 1e-6   # DP: y is clamped into [1e-6, 1 - 1e-6] before logit(y), so nothing is inf or NaN
LOG_FLOOR = 1e-30   # log of an answered probability: tiny answers become log(1e-30) = -69, never -inf
TOP1_RAISE = 1.01   # DP: a top class that lost its lead is set 1% above the largest other entry
QUERY_CHUNK = 500   # KnockoffNets asks the API in chunks this size (converting images in bulk is ~10x faster)


class BudgetExhausted(UserError, RuntimeError):
    """A query would go past the API's budget; nothing of it was answered or counted."""

    def __init__(self, used: int, budget: int, asked: int):
        super().__init__(f"query budget exhausted: {used} of {budget} queries used, {asked} more asked for")
        self.used, self.budget, self.asked = used, budget, asked


# ---------------------------------------------------------------- defences


@dataclass
class DefenceConfig:
    name: str = "none"             # none | dp | am | top1
    dp_beta: float = 0.7           # reverse-sigmoid strength (Lee et al.; the paper's DP baseline)
    dp_gamma: float = 0.5          # reverse-sigmoid slope
    am_threshold: float = 0.5      # max softmax below this counts as OOD (MNIST victim: 0.5% of test, 78% of CIFAR)
    am_sharpness: float = 100.0    # nu in alpha = sigmoid(nu (threshold - confidence)); inf = hard switch
    am_steps: int = 300            # training steps of the misinformation model
    seed: int = 0

    def validate(self) -> "DefenceConfig":
        if self.name not in DEFENCES:
            raise ConfigError(f"unknown defence '{self.name}'; choose one of: {', '.join(DEFENCES)}")
        if not (0 < self.dp_beta <= 1 and self.dp_gamma > 0 and math.isfinite(self.dp_gamma)):
            raise ConfigError(f"DP needs 0 < beta <= 1 and gamma > 0 (got beta {self.dp_beta}, gamma {self.dp_gamma})")
        if not 0 < self.am_threshold < 1:
            raise ConfigError(f"the AM threshold must be in (0, 1) (got {self.am_threshold})")
        if not self.am_sharpness > 0:
            raise ConfigError(f"the AM sharpness must be > 0, or inf for a hard switch (got {self.am_sharpness})")
        if int(self.am_steps) != self.am_steps or self.am_steps < 1:
            raise ConfigError(f"am_steps must be an integer >= 1 (got {self.am_steps})")
        return self


class DeceptivePerturbation:
    """Reverse-sigmoid perturbation of the probabilities (Lee et al. 2019), top-1 class kept.

    The map y -> y - beta (sigmoid(gamma logit y) - 1/2) is not monotone near 0 (it lifts tiny
    probabilities to ~beta/2), so when the top probability is small a near-zero class can overtake
    it; those rows get their top class raised just above the largest other entry, which guarantees
    the top-1 label honest users rely on.
    """

    def __init__(self, beta: float = 0.7, gamma: float = 0.5):
        self.beta, self.gamma = beta, gamma

    def __call__(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.perturb(F.softmax(logits.double(), 1)).float()

    def perturb(self, p: torch.Tensor) -> torch.Tensor:
        y = p.double().clamp(PROB_CLAMP, 1 - PROB_CLAMP)
        out = y - self.beta * (torch.sigmoid(self.gamma * (y.log() - (-y).log1p())) - 0.5)
        out = out.clamp_min(0)  # never needed for beta <= 1; kept so the output is always a distribution
        out = out / out.sum(1, keepdim=True)
        top = p.argmax(1, keepdim=True)
        others = out.scatter(1, top, -1.0).max(1, keepdim=True).values
        lost = out.gather(1, top) <= others
        out = out.scatter(1, top, torch.where(lost, others * TOP1_RAISE, out.gather(1, top)))
        return out / out.sum(1, keepdim=True)


class AdaptiveMisinformation:
    """Adaptive misinformation, SIMPLIFIED (after Kariyappa & Qureshi, CVPR 2020); labelled "AM (simplified)".

    alpha = sigmoid(sharpness * (threshold - max softmax)); answer = (1 - alpha) P_model + alpha P_misinfo.
    With sharpness = inf alpha is the hard switch 1[max softmax < threshold].

    What is simplified against the original: (1) the OOD detector is the victim's own max softmax, with no
    outlier-exposure training of the defended model; (2) the misinformation model is the victim's frozen
    features with a re-trained head (train_misinformation_model), not a separately trained network;
    (3) the threshold (0.5) and sharpness nu (100) are this project's choices, not the original's values
    picked for a target ID accuracy.
    """

    def __init__(self, misinformation: nn.Module, threshold: float = 0.5, sharpness: float = 100.0):
        self.misinformation, self.threshold, self.sharpness = misinformation.eval(), threshold, sharpness

    def alpha(self, confidence: torch.Tensor) -> torch.Tensor:
        if math.isinf(self.sharpness):
            return (confidence < self.threshold).to(confidence.dtype)
        return torch.sigmoid(self.sharpness * (self.threshold - confidence))

    def __call__(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits.float(), 1)
        a = self.alpha(p.max(1).values).unsqueeze(1)
        return (1 - a) * p + a * F.softmax(self.misinformation(x).float(), 1)


def train_misinformation_model(model: Classifier, data: Dataset, steps: int = 300, batch_size: int = 128,
                               lr: float = 1e-2, seed: int = 0) -> Classifier:
    """A copy of the model whose last layer is fine-tuned on the ID training data to minimise
    -log(1 - P(correct class)), Kariyappa & Qureshi's misinformation objective.

    Only the head is trained, on the victim's frozen features: fine-tuning the whole network let the
    2-D bottleneck collapse every input to one point (near-uniform answers, loss -log 0.9 for all),
    a useless misinformation model. The head alone learns, in ~2 s on a CPU, confident answers that
    are wrong on ~99.6% of the MNIST test set.
    """
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mis = copy.deepcopy(model).eval().requires_grad_(False)
    mis.head.requires_grad_(True)
    opt = torch.optim.Adam(mis.head.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(data.x_train), (batch_size,), generator=g)
        logits = mis(to_float(data.x_train[idx]).to(device))
        y = data.y_train[idx].to(device)
        # log(1 - p_y) = logsumexp over the wrong classes - logsumexp over all: stable even when p_y -> 1
        wrong = logits.scatter(1, y.unsqueeze(1), float("-inf")).logsumexp(1)
        loss = -(wrong - logits.logsumexp(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return mis.requires_grad_(False)


def make_defence(config: DefenceConfig, model: nn.Module, data: Dataset | None = None):
    """The defence object for a config (None for 'none' and 'top1', which need no perturbation)."""
    config.validate()
    if config.name == "dp":
        return DeceptivePerturbation(config.dp_beta, config.dp_gamma)
    if config.name == "am":
        if data is None:
            raise ConfigError("adaptive misinformation needs the ID training data to train its misinformation model")
        mis = train_misinformation_model(model, data, config.am_steps, seed=config.seed)
        return AdaptiveMisinformation(mis, config.am_threshold, config.am_sharpness)
    return None


# ---------------------------------------------------------------- the API


class BlackBoxAPI:
    """A model behind a prediction API: answers, counts every image, enforces a budget, poisons if told.

    query(x)   the thief's call: counted; raises BudgetExhausted (answering nothing) past the budget
    respond(x) what any user receives, not counted: for fidelity metrics (Acc_MF, KL) only
    Both take images in [0, 1] (float) or uint8, any batch size, and return (B, K) probabilities, or
    log-probabilities with log=True (computed without underflow when there is no defence).
    """

    def __init__(self, model: nn.Module, labels: str = "soft", defence=None, budget: int | None = None):
        if labels not in LABELS:
            raise ConfigError(f"labels must be one of {LABELS} (got '{labels}')")
        if budget is not None and (int(budget) != budget or budget < 1):
            raise ConfigError(f"the query budget must be an integer >= 1 (got {budget})")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.labels, self.defence, self.budget = labels, defence, budget
        self.queries_used = 0

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries_used

    def query(self, x: torch.Tensor, log: bool = False) -> torch.Tensor:
        n = len(x)
        if self.budget is not None and self.queries_used + n > self.budget:
            raise BudgetExhausted(self.queries_used, self.budget, n)
        self.queries_used += n
        return self.respond(x, log)

    @torch.no_grad()
    def respond(self, x: torch.Tensor, log: bool = False, batch_size: int = 4096) -> torch.Tensor:
        return torch.cat([self._answer(x[i:i + batch_size], log) for i in range(0, len(x), batch_size)]) \
            if len(x) > batch_size else self._answer(x, log)

    def _answer(self, x: torch.Tensor, log: bool) -> torch.Tensor:
        x = to_float(x).to(self.device)
        logits = self.model(x).float()
        if self.defence is None and self.labels == "soft":
            return F.log_softmax(logits, 1) if log else F.softmax(logits, 1)
        p = logits if self.defence is None else self.defence(x, logits)
        if self.labels == "hard":  # the top-1 of what would have been answered, as an exact one-hot
            p = F.one_hot(p.argmax(1), p.shape[1]).float()
        return p.clamp_min(LOG_FLOOR).log() if log else p


BUILD = object()  # make_api's `guard` when the defence object is still to be built


def make_api(model: nn.Module, defence: DefenceConfig, labels: str = "soft", budget: int | None = None,
             data: Dataset | None = None, guard=BUILD) -> BlackBoxAPI:
    """The API a thief faces: the model, the defence (AM trains its misinformation model on `data`).
    `guard`: the defence object make_defence already built for this model, so that the honest users' API
    and the thief's share one (AM's misinformation model is trained once)."""
    labels = "hard" if defence.name == "top1" else labels
    return BlackBoxAPI(model, labels, make_defence(defence, model, data) if guard is BUILD else guard, budget)


# ---------------------------------------------------------------- attack configuration and result


@dataclass
class AttackConfig:
    attack: str = "knockoff"       # knockoff | dfme
    labels: str = "soft"           # what the thief asks the API for: soft (probabilities) or hard (top-1)
    queries: int = 20000           # the query budget Q
    surrogate: str = "full"        # full = FULL_WIDTH[victim arch] (strong attacker) | same = victim's arch
    seed: int = 0
    eval_size: int = 10000         # ID test images the surrogate is scored on (all of MNIST's test set)
    # KnockoffNets
    sampling: str = "random"       # random | adaptive (gradient bandit over the transfer pool's classes)
    transfer: str = "cifar10"      # cifar10 (falls back to offline natural crops) | natural | path to an .npz
    epochs: int = 20               # passes over the transfer set, in total (the most, with patience)
    # Convergence: with patience P > 0 the surrogate is scored after every pass over the (final) transfer
    # set, and training stops once P passes in a row have not raised the best accuracy by min_delta. The
    # cosine learning rate still spans `epochs` passes. 0 = train all `epochs`, scored once at the end.
    patience: int = 0
    min_delta: float = 0.001
    # A transfer set drawn from the victim's own training distribution is refused unless this is set.
    allow_id_transfer: bool = False
    batch_size: int = 64
    lr: float = 3e-3               # Adam, cosine-decayed to 0 (best of 3e-4..1e-2 against the first victim)
    # Query/train rounds = points on the accuracy-vs-queries curve. 1 = KnockoffNets' own procedure
    # (query the whole budget, then train), the most accurate: against the MNIST lenet2d victim, 10
    # rounds of the same total training reached 80-87% where 1 round reached 84-90% (seeds 0-2).
    rounds: int = 1
    bandit_lr: float = 0.1
    # DFME
    dfme_batch: int = 128
    directions: int = 1            # m: random directions per sample in the gradient estimate
    eps: float = 1e-3              # forward-difference step in pre-tanh pixel space
    g_iter: int = 1
    d_iter: int = 5
    lr_student: float = 0.1        # SGD, momentum 0.9, weight decay 5e-4 (DFME's settings)
    lr_generator: float = 1e-4     # Adam
    latent_dim: int = 64           # slim generator (DFME's is 256 / ngf 64), fast on a CPU
    gen_width: int = 8
    evals: int = 20                # points on the accuracy-vs-queries curve

    def validate(self) -> "AttackConfig":
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(msg)

        def whole(name: str, low: int):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and v >= low, f"{name} must be an integer >= {low} (got {v})")

        need(self.attack in ATTACKS, f"unknown attack '{self.attack}'; choose one of: {', '.join(ATTACKS)}")
        need(self.labels in LABELS, f"labels must be one of {LABELS} (got '{self.labels}')")
        need(self.surrogate in SURROGATES, f"surrogate must be one of {SURROGATES} (got '{self.surrogate}')")
        need(self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS} (got '{self.sampling}')")
        for name, low in (("queries", 1), ("eval_size", 10), ("epochs", 1), ("batch_size", 2), ("rounds", 1), ("patience", 0),
                          ("dfme_batch", 2), ("directions", 1), ("g_iter", 1), ("d_iter", 1),
                          ("latent_dim", 1), ("gen_width", 1), ("evals", 1)):
            whole(name, low)
        # Bounds far beyond any real run: a typo becomes a message, not an overflow deep in torch.
        need(0 <= self.seed <= 2**31 - 1, f"seed must be an integer from 0 to 2,147,483,647 (got {self.seed})")
        need(self.queries <= 10**10, f"queries must be at most 10,000,000,000 (got {self.queries})")
        for name in ("lr", "lr_student", "lr_generator", "eps", "bandit_lr"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name} must be a number > 0 (got {v})")
        need(isinstance(self.min_delta, (int, float)) and math.isfinite(self.min_delta) and 0 <= self.min_delta <= 1,
             f"min_delta must be a number in [0, 1] (got {self.min_delta})")
        need(isinstance(self.allow_id_transfer, bool), f"allow_id_transfer must be true or false (got {self.allow_id_transfer})")
        if self.attack == "dfme":
            need(self.queries >= self.queries_per_iteration,
                 f"a DFME iteration costs {self.queries_per_iteration} queries (batch {self.dfme_batch} x "
                 f"(g_iter {self.g_iter} x (m {self.directions} + 1) + d_iter {self.d_iter})); "
                 f"the budget {self.queries} is smaller")
        return self

    @property
    def queries_per_iteration(self) -> int:
        """DFME's accounting, exactly as the original: batch x (g_iter x (m + 1) + d_iter)."""
        return self.dfme_batch * (self.g_iter * (self.directions + 1) + self.d_iter)

    @classmethod
    def from_dict(cls, d: dict) -> "AttackConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class AttackResult:
    """Everything an attack reports; partial while it runs (status 'running'), and when stopped."""

    attack: str
    labels: str                    # what the API actually returned (top1 forces 'hard')
    defence: str
    budget: int
    status: str = "running"        # running | finished | stopped | diverged (the student's loss became nan/inf)
    phase: str = "starting"        # what it is doing now, for a progress line
    done: float = 0.0              # share of the attack's work done (training steps / DFME iterations), 0..1
    queries: int = 0               # queries used so far
    surrogate_acc: float | None = None        # latest (final once finished) surrogate test accuracy
    surrogate_best_acc: float | None = None   # best over training: every curve and train_curve point (the papers' protocol)
    agreement: float | None = None            # top-1 agreement of surrogate and target model on the test set
    target_acc: float | None = None           # the attacked model's own test accuracy (what the API serves)
    curve: list[dict] = field(default_factory=list)  # {queries, acc, agreement, seconds}
    train_curve: list[dict] = field(default_factory=list)  # KnockoffNets with patience: {epoch, acc, agreement, seconds}
    epochs_trained: int | None = None         # KnockoffNets: passes over the final transfer set actually trained
    early_stopped: bool = False               # KnockoffNets: stopped by its patience (the accuracy had stopped improving)
    id_transfer: bool = False                 # the transfer set was the victim's own distribution (allowed explicitly)
    seconds: float = 0.0
    surrogate_arch: str = ""
    transfer_source: str | None = None        # KnockoffNets: where the query images came from
    extra: dict = field(default_factory=dict)  # attack-specific: bandit policy, generator samples, ...
    thief_view: dict | None = None            # once ended: what the thief got on the ID test set (see thief_view)
    config: dict = field(default_factory=dict)
    defence_config: dict = field(default_factory=dict)
    surrogate: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "surrogate"}
        return copy.deepcopy(d)


Progress = Callable[[AttackResult], None]


class _Scoreboard:
    """Scores the surrogate on the ID test set, keeps the curve and the clock, reports progress."""

    def __init__(self, api: BlackBoxAPI, data: Dataset, config: AttackConfig, defence: DefenceConfig,
                 progress: Progress | None, should_stop: Callable[[], bool] | None, t0: float):
        self.api, self.t0 = api, t0
        self.x_test, self.y_test = data.x_test[:config.eval_size], data.y_test[:config.eval_size]
        self.classes = data.classes
        target_logits = outputs(api.model, self.x_test, api.device)[1]
        self.target_logits = target_logits
        budget = api.remaining if api.remaining is not None else config.queries
        self.result = AttackResult(config.attack, api.labels, defence.name, budget,
                                   target_acc=accuracy(target_logits, self.y_test),
                                   config=asdict(config), defence_config=asdict(defence))
        self._progress = progress or (lambda r: None)
        self._should_stop = should_stop or (lambda: False)
        self.stopped = False
        self.diverged: str | None = None  # why the attack's own training blew up, when it did

    def should_stop(self) -> bool:
        self.stopped = self.stopped or bool(self._should_stop())
        return self.stopped

    def report(self, phase: str, done: float | None = None) -> None:
        r = self.result
        r.phase, r.queries, r.seconds = phase, self.api.queries_used, time.perf_counter() - self.t0
        if done is not None:
            r.done = min(1.0, done)
        self._progress(r)

    def _measure(self, surrogate: nn.Module) -> None:
        """The surrogate's test accuracy and agreement with the target, into the result (its mode kept)."""
        was_training = surrogate.training
        logits = outputs(surrogate.eval(), self.x_test, self.api.device)[1]
        surrogate.train(was_training)
        r = self.result
        r.surrogate_acc, r.agreement = accuracy(logits, self.y_test), agreement(logits, self.target_logits)

    def score(self, surrogate: nn.Module, phase: str = "evaluating", done: float | None = None, **extra) -> None:
        """Evaluate the surrogate now and add a curve point (at most one per query count)."""
        self._measure(surrogate)
        self.add_point(**extra)
        self.report(phase, done)

    def score_pass(self, surrogate: nn.Module, epoch: int, done: float) -> float:
        """Score the surrogate after a pass over the transfer set (a train_curve point); returns its accuracy."""
        self._measure(surrogate)
        r = self.result
        r.train_curve.append({"epoch": epoch, "acc": r.surrogate_acc, "agreement": r.agreement,
                              "seconds": round(time.perf_counter() - self.t0, 3)})
        r.surrogate_best_acc = best_accuracy(r.curve, r.train_curve)
        self.report(f"training (pass {epoch}, accuracy {r.surrogate_acc:.4f})", done)
        return r.surrogate_acc

    def add_point(self, **extra) -> None:
        """A curve point from the latest score (the surrogate has not changed since), without scoring again."""
        r = self.result
        point = {"queries": self.api.queries_used, "acc": r.surrogate_acc, "agreement": r.agreement,
                 "seconds": round(time.perf_counter() - self.t0, 3), **extra}
        if r.curve and r.curve[-1]["queries"] == point["queries"]:
            r.curve[-1] = point
        else:
            r.curve.append(point)
        r.surrogate_best_acc = best_accuracy(r.curve, r.train_curve)

    def finish(self, surrogate: nn.Module) -> AttackResult:
        if not self.result.curve or self.result.curve[-1]["queries"] != self.api.queries_used:
            self.score(surrogate)
        r = self.result
        r.status = "stopped" if self.stopped else "diverged" if self.diverged else "finished"
        if self.diverged:
            r.extra["diverged"] = self.diverged
        r.surrogate = surrogate.eval()
        r.thief_view = thief_view(self.x_test, self.y_test, self.target_logits,
                                  outputs(r.surrogate, self.x_test, self.api.device)[1], self.classes)
        self.report(r.status, None if self.stopped else 1.0)
        return r


EXAMPLES_PER_CLASS = 2  # test images of each class shown with both answers: a grid a class can read at once


def thief_view(x: torch.Tensor, y: torch.Tensor, target_logits: torch.Tensor, surrogate_logits: torch.Tensor,
               classes: tuple[str, ...]) -> dict:
    """What the thief got, on the ID test set: the attacked model's and the surrogate's confusions
    (counts[true][answered]) and, for the first EXAMPLES_PER_CLASS test images of each class, the images with
    both answers. Small (a few kB as JSON), so it is saved with the result and drawn later without the models."""
    n = len(classes)
    target, thief = target_logits.argmax(1), surrogate_logits.argmax(1)
    picked = [i for c in range(n) for i in (y == c).nonzero().flatten()[:EXAMPLES_PER_CLASS].tolist()]
    images = x[picked].to(torch.uint8).contiguous().numpy()  # (k, C, H, W), as the dataset stores them
    return {"classes": list(classes), "images": len(y),
            "target_confusion": confusion(y, target, n), "surrogate_confusion": confusion(y, thief, n),
            "examples": {"shape": list(images.shape), "pixels": base64.b64encode(images.tobytes()).decode("ascii"),
                         "truth": y[picked].tolist(), "target": target[picked].tolist(),
                         "surrogate": thief[picked].tolist()}}


def thief_view_problem(view) -> str | None:
    """What is wrong with a saved thief_view (a file read back: it may be damaged or hand-made), or None."""
    if not isinstance(view, dict):
        return "not an object"
    classes, ex = view.get("classes"), view.get("examples")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return "'classes' is not a list of names"
    n = len(classes)
    for key in ("target_confusion", "surrogate_confusion"):
        m = view.get(key)
        if not (isinstance(m, list) and len(m) == n and all(isinstance(row, list) and len(row) == n
                                                           and all(type(v) is int and v >= 0 for v in row) for row in m)):
            return f"'{key}' is not a {n} x {n} table of counts"
    if not isinstance(ex, dict):
        return "no 'examples'"
    shape = ex.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(v) is int and v > 0 for v in shape)
            and shape[1] in (1, 3)):
        return "'examples.shape' is not (images, channels 1 or 3, height, width)"
    try:
        size = len(base64.b64decode(ex.get("pixels", ""), validate=True))
    except (TypeError, ValueError):
        return "'examples.pixels' is not base64"
    if size != math.prod(shape):
        return f"'examples.pixels' holds {size} bytes, not the {math.prod(shape)} of its shape"
    for key in ("truth", "target", "surrogate"):
        v = ex.get(key)
        if not (isinstance(v, list) and len(v) == shape[0] and all(type(a) is int and 0 <= a < n for a in v)):
            return f"'examples.{key}' is not {shape[0]} class indices"
    return None


def example_images(view: dict) -> np.ndarray:
    """The uint8 images (k, C, H, W) of a thief_view's examples."""
    ex = view["examples"]
    return np.frombuffer(base64.b64decode(ex["pixels"]), dtype=np.uint8).reshape(ex["shape"])


def best_accuracy(*curves: list[dict]) -> float | None:
    """The best surrogate accuracy over every point of the given curves (None when there is none)."""
    accs = [p["acc"] for c in curves for p in c if p.get("acc") is not None]
    return max(accs) if accs else None


def make_surrogate(target: Classifier, choice: str, seed: int) -> Classifier:
    arch = FULL_WIDTH[target.arch] if choice == "full" else target.arch
    torch.manual_seed(seed)
    return build_model(arch, target.dataset).to(next(target.parameters()).device)


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against answered probabilities (one-hot answers make it the usual CE)."""
    return -(probs * F.log_softmax(logits, 1)).sum(1).mean()


# ---------------------------------------------------------------- KnockoffNets


@dataclass
class TransferPool:
    """Candidate query images (kept in their own format, converted per query) and a class per image."""

    images: torch.Tensor           # uint8, in the source's shape
    groups: torch.Tensor           # int64 class / cluster of each image (the adaptive policy's actions)
    group_names: tuple[str, ...]
    source: str
    shape: tuple[int, int, int]    # the victim's input shape

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        return convert_images(self.images[idx], self.shape)


def _clusters(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means on 8x8 grey thumbnails: stand-in classes for a pool without labels."""
    from sklearn.cluster import KMeans

    thumbs = F.adaptive_avg_pool2d(to_float(x).mean(1, keepdim=True), 8).flatten(1).numpy()
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(thumbs)
    return torch.from_numpy(labels.astype(np.int64))


def transfer_pool(source: str, shape: tuple[int, int, int], need: int, data_dir=None, seed: int = 0) -> TransferPool:
    """The KnockoffNets transfer set.

    cifar10: CIFAR-10's 50,000 training images, its labels as the bandit's classes; without CIFAR-10 on
             disk, load_ood's offline natural-image crops (and says so), with k-means clusters as classes.
    natural: the offline natural-image crops (scikit-learn's two sample photos), k-means clusters as classes.
    a path:  an .npz with x_train (uint8 images, HxW or HxWxC or CHW-ordered NCHW) and optional y_train.
    `need` is how many images the attack may draw (crops are generated to that number).
    """
    if source == "cifar10":
        try:
            ds = load_dataset("cifar10", data_dir, download=False)
            return TransferPool(ds.x_train, ds.y_train, DATASETS["cifar10"].classes,
                                f"CIFAR-10 train ({ds.source}), as {shape}", shape)
        except DataError:
            pass  # load_ood below falls back to the offline crops and says so in its source
    if source in ("cifar10", "natural"):
        ood = load_ood(source, shape, need, data_dir, seed=seed, split="train")
        return TransferPool(ood.x, _clusters(ood.x, 10, seed), tuple(f"cluster {i}" for i in range(10)),
                            ood.source + "; adaptive classes = 10 k-means clusters", shape)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"transfer set '{source}' not found; use cifar10, natural or the path of an .npz with x_train")
    try:
        with np.load(path) as z:
            x = z["x_train"] if "x_train" in z else z["x"]
            y = z["y_train"] if "y_train" in z else None
    except Exception as e:
        raise DataError(f"transfer set '{path}' is not a readable .npz with x_train ({type(e).__name__}: {e})") from None
    check_images(x, f"transfer set {path} array x_train")
    t = nchw(x) if x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3)) else torch.from_numpy(x)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise DataError(f"transfer set '{path}': x_train has shape {tuple(x.shape)}, expected N images")
    if y is not None:
        groups = torch.from_numpy(np.unique(y, return_inverse=True)[1].astype(np.int64).ravel())
        names = tuple(str(v) for v in np.unique(y))
    else:
        groups, names = _clusters(t, 10, seed), tuple(f"cluster {i}" for i in range(10))
    return TransferPool(t, groups, names, f"npz file {path} ({len(t)} images), as {shape}", shape)


# ---------------------------------------------------------------- no silent ID transfer sets

ID_OVERLAP = 0.1        # share of sampled transfer images found among the victim's own images that makes it ID
ID_SAMPLE = 256         # transfer images sampled for that check


def _image_keys(x: torch.Tensor) -> set[bytes]:
    flat = x.reshape(len(x), -1).contiguous().numpy()
    return {row.tobytes() for row in flat}


def id_transfer_reason(source: str, data: Dataset, pool: "TransferPool | None" = None) -> str | None:
    """Why a KnockoffNets transfer set is the victim's own training distribution, or None when it is not.

    By name: the source names the victim's dataset (cifar10 against a CIFAR-10 victim). By content (with
    the loaded pool): at least 10% of up to 256 transfer images, spread over the pool, are exact copies of
    the victim's train or test images (an .npz holding the victim's data, or a part of it)."""
    if source == data.name:
        return f"the transfer set '{source}' is the victim's own training distribution ({data.name})"
    if pool is None or source in ("cifar10", "natural"):
        return None
    idx = torch.linspace(0, len(pool) - 1, min(ID_SAMPLE, len(pool))).round().long().unique()
    own = _image_keys(data.x_train) | _image_keys(data.x_test)
    found = sum(k in own for k in (row.tobytes() for row in pool.take(idx).reshape(len(idx), -1).numpy()))
    if found >= ID_OVERLAP * len(idx):
        return (f"{found} of {len(idx)} sampled transfer images ({pool.source}) are copies of the victim's own "
                f"{data.name} images")
    return None


def check_transfer(config: "AttackConfig", data: Dataset, data_dir=None) -> bool:
    """Refuse (ConfigError, one line) a KnockoffNets transfer set from the victim's own distribution unless
    config.allow_id_transfer; returns whether it is one (allowed). Loads an .npz transfer set to look at
    its images; named sources are judged by name. DFME has no transfer set: always False."""
    if config.attack != "knockoff":
        return False
    pool = None
    if config.transfer not in ("cifar10", "natural"):
        pool = transfer_pool(config.transfer, data.shape, 0, data_dir, config.seed)
    return _id_verdict(id_transfer_reason(config.transfer, data, pool), config)


def _id_verdict(reason: str | None, config: "AttackConfig") -> bool:
    if reason is None:
        return False
    if not config.allow_id_transfer:
        raise ConfigError(f"{reason}: the attack would query with ID data; use an OOD transfer set, or allow it "
                          "explicitly (--allow-id-transfer, AttackConfig.allow_id_transfer)")
    return True


class RandomSampler:
    """KnockoffNets' random policy: the pool in a seeded random order, without replacement."""

    def __init__(self, pool: TransferPool, g: torch.Generator):
        self.order, self.pos = torch.randperm(len(pool), generator=g), 0

    def next(self, n: int) -> torch.Tensor:
        idx = self.order[self.pos:self.pos + n]
        self.pos += n
        return idx

    def state(self) -> dict:
        return {}


class BanditSampler:
    """KnockoffNets' adaptive policy: a gradient bandit (Sutton & Barto 2.8) over the pool's classes.

    Each query's reward is the sum of Orekondy et al.'s three signals, each standardised by its
    running mean and std: certainty (top-1 minus top-2 answered probability), diversity (how far the
    answer is above the running mean answer, summed over classes) and the surrogate's loss on the
    answer. Images are drawn without replacement; an emptied class gets probability 0.
    """

    def __init__(self, pool: TransferPool, g: torch.Generator, lr: float):
        self.g, self.lr, self.names = g, lr, pool.group_names
        k = len(pool.group_names)
        self.h = torch.zeros(k, dtype=torch.float64)
        self.queues = [(pool.groups == a).nonzero().flatten() for a in range(k)]
        self.queues = [q[torch.randperm(len(q), generator=g)] for q in self.queues]
        self.pos = [0] * k
        self.mean_answer: torch.Tensor | None = None
        self.stats = {name: [0, 0.0, 0.0] for name in ("certainty", "diversity", "loss", "total")}  # n, mean, M2
        self.picks = torch.zeros(k, dtype=torch.int64)

    def policy(self) -> torch.Tensor:
        alive = torch.tensor([p < len(q) for p, q in zip(self.pos, self.queues)])
        return torch.softmax(self.h.masked_fill(~alive, float("-inf")), 0)

    def next(self, n: int) -> torch.Tensor:
        out = []
        for _ in range(n):
            a = int(torch.multinomial(self.policy(), 1, generator=self.g))
            out.append(int(self.queues[a][self.pos[a]]))
            self.pos[a] += 1
            self.picks[a] += 1
        return torch.tensor(out, dtype=torch.int64)

    def _standardise(self, name: str, v: torch.Tensor) -> torch.Tensor:
        n, mean, m2 = self.stats[name]
        for x in v.tolist():  # Welford's running mean and variance
            n += 1
            d = x - mean
            mean += d / n
            m2 += d * (x - mean)
        self.stats[name] = [n, mean, m2]
        std = math.sqrt(m2 / n) if n > 1 else 1.0
        return (v - mean) / (std if std > 1e-12 else 1.0)

    def update(self, idx: torch.Tensor, actions: torch.Tensor, answers: torch.Tensor,
               surrogate_logits: torch.Tensor) -> None:
        answers, surrogate_logits = answers.double().cpu(), surrogate_logits.double().cpu()
        top2 = answers.topk(2, 1).values
        certainty = top2[:, 0] - top2[:, 1]
        if self.mean_answer is None:
            self.mean_answer = answers.mean(0)
        diversity = (answers - self.mean_answer).clamp_min(0).sum(1)
        self.mean_answer = 0.9 * self.mean_answer + 0.1 * answers.mean(0)
        loss = -(answers * F.log_softmax(surrogate_logits, 1)).sum(1)
        reward = sum(self._standardise(n, v) for n, v in
                     (("certainty", certainty), ("diversity", diversity), ("loss", loss)))
        baseline = self.stats["total"][1]
        self._standardise("total", reward)
        pi = self.policy()
        onehot = F.one_hot(actions, len(self.h)).double()
        # H_a += lr (R - baseline) (1[a = A] - pi_a), averaged over the batch of queries
        self.h += self.lr * ((reward - baseline).unsqueeze(1) * (onehot - pi.unsqueeze(0))).mean(0)

    def state(self) -> dict:
        return {"policy": dict(zip(self.names, [round(float(p), 4) for p in self.policy()])),
                "picks": dict(zip(self.names, self.picks.tolist()))}


def knockoff(api: BlackBoxAPI, data: Dataset, config: AttackConfig, defence: DefenceConfig | None = None,
             data_dir=None, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
             ) -> AttackResult:
    """KnockoffNets against `api`, spending api.remaining queries (or config.queries without a budget).

    The budget is spent in `rounds` equal rounds: query the round's images, then train the surrogate
    for its share of the steps on everything answered so far, then score it (a curve point). The
    shares grow with the data (round k trains ~k times as long as round 1), and sum to `epochs` passes
    over the final transfer set, as KnockoffNets' train-after-querying (rounds = 1) does.

    With config.patience > 0 the last round scores the surrogate after every pass over the transfer set
    (result.train_curve) and stops once `patience` passes in a row have not raised the best accuracy by
    min_delta (result.early_stopped); surrogate_acc is the final model's, surrogate_best_acc the best.
    """
    t0 = time.perf_counter()
    config = config.validate()
    defence = defence or DefenceConfig()
    board = _Scoreboard(api, data, config, defence, progress, should_stop, t0)
    budget = api.remaining if api.remaining is not None else config.queries
    device = api.device
    pool = transfer_pool(config.transfer, data.shape, budget * (2 if config.sampling == "adaptive" else 1),
                         data_dir, config.seed)
    if len(pool) < budget:
        raise DataError(f"the transfer set has {len(pool)} images, fewer than the {budget} queries asked for "
                        f"({pool.source}); lower the budget")
    board.result.id_transfer = _id_verdict(id_transfer_reason(config.transfer, data, pool), config)
    board.result.transfer_source = pool.source + (" [the victim's own distribution, allowed explicitly]"
                                                  if board.result.id_transfer else "")
    g = torch.Generator().manual_seed(config.seed)
    if config.sampling == "adaptive":
        sampler = BanditSampler(pool, g, config.bandit_lr)
    else:
        sampler = RandomSampler(pool, g)
    surrogate = make_surrogate(api.model, config.surrogate, config.seed)
    board.result.surrogate_arch = surrogate.arch
    opt = torch.optim.Adam(surrogate.parameters(), lr=config.lr)
    total_steps = max(1, math.ceil(config.epochs * budget / config.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    bounds = [round(budget * k / config.rounds) for k in range(config.rounds + 1)]
    steps_per_round = [round(total_steps * q / sum(bounds[1:])) for q in bounds[1:]]
    steps_per_pass = max(1, math.ceil(budget / config.batch_size))

    xs = torch.empty(budget, *data.shape, dtype=torch.uint8)
    answers = torch.empty(budget, len(data.classes))
    got = steps_done = 0
    board.score(surrogate, "querying")
    last = config.rounds - 1
    best, since_best, scored_at = -math.inf, 0, None
    for r in range(config.rounds):
        while got < bounds[r + 1] and not board.should_stop():
            n = min(QUERY_CHUNK, bounds[r + 1] - got)
            idx = sampler.next(n)
            x = pool.take(idx)
            a = api.query(x.to(device))
            xs[got:got + n], answers[got:got + n] = x, a.cpu()
            if isinstance(sampler, BanditSampler):
                with torch.no_grad():
                    s_logits = surrogate.eval()(to_float(x).to(device))
                sampler.update(idx, pool.groups[idx], a, s_logits)
            got += n
        board.report("querying")
        surrogate.train()
        for step in range(steps_per_round[r]):
            if board.should_stop():
                break
            if step and step % steps_per_pass == 0:  # a progress line while a long round trains
                board.report(f"training (round {r + 1} of {config.rounds}, "
                             f"{step / steps_per_round[r]:.0%} of its steps)", steps_done / total_steps)
            steps_done += 1
            idx = torch.randint(got, (config.batch_size,), generator=g)
            loss = soft_cross_entropy(surrogate(to_float(xs[idx]).to(device)), answers[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if r == last and config.patience and ((step + 1) % steps_per_pass == 0 or step + 1 == steps_per_round[r]):
                passes = math.ceil((step + 1) / steps_per_pass)
                acc = board.score_pass(surrogate, passes, steps_done / total_steps)
                scored_at, board.result.epochs_trained = steps_done, passes
                if acc > best + config.min_delta:
                    best, since_best = acc, 0
                else:
                    since_best += 1
                if since_best >= config.patience:
                    board.result.early_stopped = True
                    break
        if r == last and not config.patience:
            board.result.epochs_trained = math.ceil(steps_per_round[r] / steps_per_pass)
        board.result.extra = sampler.state()
        if board.stopped:
            break
        if scored_at == steps_done:  # the pass just scored is this round's end: the same model, no second scoring
            board.add_point(round=r + 1)
            board.report("training", steps_done / total_steps)
        else:
            board.score(surrogate, "training", steps_done / total_steps, round=r + 1)
    return board.finish(surrogate)


# ---------------------------------------------------------------- DFME


def _pre_tanh(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """G's output before its final tanh (DFME perturbs there); images are (tanh(.) + 1) / 2."""
    x = generator.fc(z).view(len(z), -1, generator.h0, generator.w0)
    return generator.net[:-1](x)


def _to_images(pre: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(pre) + 1) / 2


def _student_loss(student_logits: torch.Tensor, answers_log: torch.Tensor, labels: str) -> torch.Tensor:
    """Per-sample loss of the student against the API's answers (both attack steps use it).

    soft: DFME's L1 between the student's logits and the victim's mean-centred log-probabilities
          (the logits up to a constant, as far as probabilities reveal them).
    hard: cross-entropy on the returned top-1 labels (L1 against one-hot log-probabilities would
          only measure the floor LOG_FLOOR, not the victim).
    """
    if labels == "hard":
        return F.cross_entropy(student_logits, answers_log.argmax(1), reduction="none")
    target = answers_log - answers_log.mean(1, keepdim=True)
    return (student_logits - target).abs().mean(1)


def dfme(api: BlackBoxAPI, data: Dataset, config: AttackConfig, defence: DefenceConfig | None = None,
         data_dir=None, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
         ) -> AttackResult:
    """Data-free model extraction against `api` (Truong et al. 2021).

    Each iteration: g_iter generator steps, each estimating dL/dx by forward differences along m random
    unit directions in G's pre-tanh output (m + 1 queries per sample), with L = -student loss (G seeks
    queries where the student is wrong); then d_iter student steps on fresh G samples (1 query each).
    Hard labels: the same, with cross-entropy on the returned labels as the loss of both players. At small
    budgets on the MNIST victim G's samples collapse onto the class the victim answers most (8) and the
    student with them; Sanyal et al.'s hard-label DFMS adds a proxy data set and a class-diversity loss.
    Iterations = budget // (batch x (g_iter x (m + 1) + d_iter)); the remainder is left unspent.
    """
    t0 = time.perf_counter()
    budget = api.remaining if api.remaining is not None else config.queries
    config = replace(config, queries=budget).validate()
    defence = defence or DefenceConfig()
    board = _Scoreboard(api, data, config, defence, progress, should_stop, t0)
    device, labels = api.device, api.labels
    b, m = config.dfme_batch, config.directions
    student = make_surrogate(api.model, config.surrogate, config.seed)
    board.result.surrogate_arch = student.arch
    generator = Generator(config.latent_dim, data.shape, config.gen_width).to(device).train()
    if not isinstance(generator.net[-1], nn.Tanh):
        raise RuntimeError("core.advft.Generator no longer ends in tanh; DFME's pre-tanh perturbation needs it")
    g = torch.Generator().manual_seed(config.seed)
    opt_s = torch.optim.SGD(student.parameters(), lr=config.lr_student, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator)
    iterations = budget // config.queries_per_iteration
    milestones = sorted({max(1, int(iterations * f)) for f in (0.1, 0.3, 0.5)})
    sched_s = torch.optim.lr_scheduler.MultiStepLR(opt_s, milestones, 0.3)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestones, 0.3)
    eval_at = {round(iterations * k / config.evals) for k in range(1, config.evals + 1)}
    dim = int(np.prod(data.shape))

    def noise() -> torch.Tensor:
        return torch.randn(b, config.latent_dim, generator=g).to(device)

    board.score(student, "starting")
    loss_g = loss_s = float("nan")
    for it in range(1, iterations + 1):
        if board.should_stop():
            break
        student.eval()
        for _ in range(config.g_iter):
            pre = _pre_tanh(generator, noise())
            u = torch.randn(b, m, dim, generator=g).to(device)
            u = u / u.norm(dim=2, keepdim=True)
            with torch.no_grad():
                points = torch.cat([pre.detach().view(b, 1, dim) + config.eps * u, pre.detach().view(b, 1, dim)], 1)
                images = _to_images(points).view(b * (m + 1), *data.shape)
                value = -_student_loss(student(images), api.query(images, log=True), labels).view(b, m + 1)
                # forward differences: grad ~ dim/m sum_j (L(x + eps u_j) - L(x)) / eps u_j, per sample
                slopes = (value[:, :m] - value[:, m:]) / config.eps
                grad = (dim / m) * (slopes.unsqueeze(2) * u).sum(1) / b
            opt_g.zero_grad(set_to_none=True)
            pre.backward(grad.view_as(pre))
            opt_g.step()
            loss_g = float(value[:, m].mean())
        student.train()
        for _ in range(config.d_iter):
            with torch.no_grad():
                images = generator(noise())
                answers = api.query(images, log=True)
            loss = _student_loss(student(images), answers, labels).mean()
            opt_s.zero_grad(set_to_none=True)
            loss.backward()
            opt_s.step()
            loss_s = loss.item()
        sched_s.step()
        sched_g.step()
        if not math.isfinite(loss_s):
            # The thief's own training blew up (seen with a small student without batch norm at DFME's
            # lr 0.1, against a protected model whose answers span +-100 in log-probability). That is
            # a result, not a crash: the attack ends here; its best accuracy is what it reached before.
            board.diverged = f"the student's loss became {loss_s} at iteration {it} (a lower lr_student may train)"
            break
        if it in eval_at:
            board.result.extra = {"loss_generator": loss_g, "loss_student": loss_s, "iterations": it,
                                  "iterations_total": iterations}
            board.score(student, "training", it / iterations, iteration=it)
        elif it % 10 == 0:
            board.report("training", it / iterations)
    with torch.no_grad():
        samples = generator.eval()(torch.randn(16, config.latent_dim, generator=torch.Generator().manual_seed(0)).to(device))
    board.result.extra.update({"samples": (samples.cpu().clamp(0, 1) * 255).round().to(torch.uint8).tolist(),
                               "queries_per_iteration": config.queries_per_iteration})
    return board.finish(student)


# ---------------------------------------------------------------- one entry point


def run_attack(target: Classifier, data: Dataset, config: AttackConfig, defence: DefenceConfig | None = None,
               data_dir=None, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
               guard=BUILD) -> AttackResult:
    """Put `target` behind an API with `defence` and a budget of config.queries, and attack it.

    progress(result) is called with the partial AttackResult (queries so far, curve so far, phase);
    should_stop() is polled between queries and training steps: a stopped attack returns its partial
    result with status 'stopped'. The returned result holds the trained surrogate (result.surrogate).
    `guard`: a defence object already built for `target` (make_defence), reused instead of built again.
    """
    config = config.validate()
    defence = (defence or DefenceConfig()).validate()
    api = make_api(target, defence, config.labels, config.queries, data, guard)
    return ATTACKS[config.attack].run(api, data, config, defence, data_dir, progress, should_stop)


@dataclass(frozen=True)
class Attack:
    label: str   # how tables and pages name it
    run: Callable[..., AttackResult]  # (api, data, config, defence, data_dir, progress, should_stop), as knockoff


# The attacks, by name (AttackConfig.attack, the CLI's --attack, the Attack page's choice). A new attack is
# one function with knockoff's signature that queries `api` and returns its AttackResult, and one line here.
ATTACKS: dict[str, Attack] = {"knockoff": Attack("KnockoffNets", knockoff), "dfme": Attack("DFME", dfme)}
