"""Adversarial fine-tuning (AdvFT), Algorithm 1 of the paper, as a steppable engine.

    M_F <- copy of M_R, last layer frozen
    for each of N epochs:
        I_G generator steps:  minimise L_G  = D(F_F(G(z)), F_R(G(z)))                      (eq. 1)
        I_F model steps:      minimise L_F  = max(D_id - D_fake + m, 0) + D_id            (eq. 2, 3)
            with D_id   = mean over an ID batch of D(F_F(x), F_R(x))
                 D_fake = mean (or median, as in the authors' code) over a generated batch

D is the squared L2 distance of the paper ("l2sq") or the plain L2 distance of the authors' code
("l2"). Both add eps = 1e-6 to the difference, as torch's PairwiseDistance does in the authors'
code: at the start M_F = M_R makes every difference exactly zero, where the squared distance has
a zero gradient and the plain one none at all; with the eps the gradient is tiny but non-zero, and
Adam's normalisation turns it into full-size steps, so training starts in both forms.

The engine knows nothing of any UI: it is stepped (`step`, `step_generator`, `step_model`,
`run_epoch`), reports through `snapshot()` and `history`, and saves/restores with `state_dict()`.
M_F stays in eval mode throughout (BatchNorm statistics frozen, as in the authors' code).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn

from .data import OOD_SOURCES, Dataset, ImageSet, stratified_indices, to_float
from .errors import UserError
from .metrics import Evaluator, kl_divergence, outputs

EPS = 1e-6
DISTANCES = ("l2", "l2sq")
FAKE_REDUCTIONS = ("mean", "median")
LR_SCHEDULES = ("constant", "cosine")
MAX_EPOCHS = 10_000


class ConfigError(UserError, ValueError):
    """A setting is out of range; the message names it and the allowed values."""


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite."""


@dataclass
class AdvFTConfig:
    margin: float = 10.0          # m in eq. (2) (its scale: core/knobs.py)
    epochs: int = 6               # N
    i_g: int = 50                 # generator steps per epoch
    i_f: int = 150                # model steps per epoch
    batch_size: int = 64          # ID batch and generated batch, each
    lr_g: float = 1e-3
    lr_f: float = 1e-3
    distance: str = "l2"          # "l2" (authors' code) or "l2sq" (the paper's equations)
    fake_reduce: str = "mean"     # "mean" or "median" (authors' code) over the generated batch
    lr_schedule: str = "constant"  # "cosine" decays lr_f to 0 over all model steps
    latent_dim: int = 64
    gen_width: int = 16           # generator channels (ngf); the authors' DFME generator uses 64
    ood: str = "cifar10"          # OOD probe source for plots and OOD metrics
    allow_id_ood: bool = False    # use an OOD source that is the victim's own training distribution (refused otherwise)
    probe_size: int = 500         # ID and OOD points drawn in the feature plots
    eval_train_size: int = 10000  # training images KL_train is measured on each epoch
    eval_ood_size: int = 2000     # OOD images for ood_shift / ood_agreement
    seed: int = 0

    def validate(self) -> "AdvFTConfig":
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0,
             f"margin must be a finite number > 0 (got {self.margin})")
        def whole(name: str, label: str, low: int, high: int):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and int(v) == v
                 and low <= v <= high, f"{label} must be an integer from {low} to {high:,} (got {v})")

        # Upper bounds are far beyond any sensible run; they turn typos (1e12 epochs, a batch that cannot
        # fit in memory, a seed torch cannot take) into a message instead of a hang or a traceback.
        whole("epochs", "epochs", 1, MAX_EPOCHS)
        whole("i_g", "I_G", 0, 1_000_000)
        whole("i_f", "I_F", 1, 10_000_000)
        whole("batch_size", "batch size", 2, 8192)
        whole("seed", "seed", 0, 2**31 - 1)
        for name in ("lr_g", "lr_f"):
            v = getattr(self, name)
            need(math.isfinite(v) and 0 < v <= 1, f"{name} must be in (0, 1] (got {v})")
        need(self.distance in DISTANCES, f"distance must be one of {DISTANCES} (got '{self.distance}')")
        need(self.fake_reduce in FAKE_REDUCTIONS, f"fake_reduce must be one of {FAKE_REDUCTIONS} (got '{self.fake_reduce}')")
        need(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES} (got '{self.lr_schedule}')")
        need(self.ood in OOD_SOURCES, f"ood must be one of {OOD_SOURCES} (got '{self.ood}')")
        need(isinstance(self.allow_id_ood, bool), f"allow_id_ood must be true or false (got {self.allow_id_ood})")
        whole("latent_dim", "latent_dim", 1, 4096)
        whole("gen_width", "gen_width", 1, 1024)
        for name in ("probe_size", "eval_train_size", "eval_ood_size"):
            whole(name, name, 10, 1_000_000)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "AdvFTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# What building a trainer (AdvFT.__init__) reads besides the victim, the data and the device: the fixed
# evaluation and probe sets, the generator's initial weights, the OOD source. Every other field is a
# training knob, first read by the steps (see AdvFT.retune).
BUILD_FIELDS = ("seed", "probe_size", "eval_train_size", "eval_ood_size", "ood", "allow_id_ood", "latent_dim",
                "gen_width")


# Presets: a victim (assets/victims/<name>.pt) and the config overrides that go with it.
PRESETS: dict[str, dict] = {
    # The live demo: the smallest settings found that protect convincingly within 90 s on a 2-core CPU
    # (bench/bench_preset.py --preset lecture; its figures are in docs/results.md). The engine's defaults (m = 10, N = 6)
    # leave the thief at 40-50% on this victim.
    "lecture": {"victim": "mnist_lenet2d", "config": {"margin": 30.0, "epochs": 15, "i_g": 25}},
    # The same on the offline default data (no dataset on disk needed).
    "offline": {"victim": "digits_lenet2d", "config": {"margin": 30.0, "epochs": 15, "i_g": 25}},
    # The paper's Fig. 5 model (the slim ResNet-18 with a 2-D penultimate layer) with the engine's defaults
    # (m = 10, N = 6, 50 G + 150 F steps per epoch: what its 30-minute recording was made with).
    "fig5": {"victim": "mnist_resnet18_2d", "config": {}},
    # Tables 2-3 on a CPU, chosen by bench/bench_preset.py's rule (fidelity and the 20-minute budget first,
    # then the lowest median thief over seeds 0-2): the paper's victim (the authors' full-width LeNet on
    # MNIST) with the paper's margin, loss and optimiser (m = 100, median over the fake batch, Adam 1e-4, its
    # DFME-size generator) in 8 epochs of 50 G + 938 F steps: 7,900 steps against the paper's 352,000, so a
    # project setting, not the authors'. A KnockoffNets thief keeps 51% (median of 3 seeds; the paper: 21%)
    # at Acc_MF within 0.03 points of M_R; 15 minutes on a quiet 2-core CPU. docs/results.md has
    # the measurements.
    "table-mnist": {"victim": "mnist_lenet", "config": {
        "margin": 100.0, "epochs": 8, "i_g": 50, "i_f": 938, "lr_g": 1e-4, "lr_f": 1e-4,
        "fake_reduce": "median", "latent_dim": 256, "gen_width": 64}},
    # The candidate the rule set aside: the same victim with the engine's defaults (m = 10, plain L2, mean
    # over the fake batch, Adam 1e-3, 50 G + 150 F steps per epoch) for 20 epochs: 3-10 minutes and the same
    # fidelity, but a KnockoffNets thief keeps 81% (median of 3 seeds).
    "table-mnist-m10": {"victim": "mnist_lenet", "config": {"epochs": 20}},
    # The authors' settings (Adam 1e-4, m = 100, median over the fake batch, 500 G steps and 5 passes over
    # MNIST = 4,690 F steps per epoch, their DFME-size generator). N = 6 is Table 2's (DFME); Table 3
    # (KnockoffNets) used N = 75. Hours on a CPU.
    "paper": {"victim": "mnist_lenet", "config": {
        "margin": 100.0, "epochs": 6, "i_g": 500, "i_f": 4690, "lr_g": 1e-4, "lr_f": 1e-4,
        "fake_reduce": "median", "distance": "l2", "latent_dim": 256, "gen_width": 64}},
}


def preset_config(name: str, **overrides) -> AdvFTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return replace(AdvFTConfig(**PRESETS[name]["config"]), **overrides)


# ---------------------------------------------------------------- the pieces of the algorithm


class Generator(nn.Module):
    """A small DCGAN-style generator (the DFAD/DFME design, narrower) producing images in [0, 1]."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int = 16):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ConfigError(f"the generator needs image sides divisible by 4 (got {h}x{w})")
        self.latent_dim, self.shape, self.h0, self.w0 = latent_dim, shape, h // 4, w // 4
        self.fc = nn.Linear(latent_dim, 2 * width * self.h0 * self.w0)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, 1, 1), nn.BatchNorm2d(c, affine=False), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), -1, self.h0, self.w0)
        return (self.net(x) + 1) / 2  # tanh range -> the models' [0, 1] input range


def feature_distance(a: torch.Tensor, b: torch.Tensor, form: str) -> torch.Tensor:
    """Per-sample distance between feature rows (eps-shifted, see the module docstring)."""
    d = a - b + EPS
    sq = (d * d).sum(1)
    return sq if form == "l2sq" else sq.sqrt()


def generator_loss(f_model: torch.Tensor, f_ref: torch.Tensor, form: str) -> torch.Tensor:
    """Eq. (1): G wants generated inputs on which M_F and M_R agree."""
    return feature_distance(f_model, f_ref, form).mean()


def fine_tune_loss(f_id: torch.Tensor, f_id_ref: torch.Tensor, f_fake: torch.Tensor, f_fake_ref: torch.Tensor,
                   margin: float, form: str, fake_reduce: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. (2) and (3): returns (L_F, L_F1, L_F2)."""
    d_id = feature_distance(f_id, f_id_ref, form).mean()
    per_fake = feature_distance(f_fake, f_fake_ref, form)
    d_fake = per_fake.median() if fake_reduce == "median" else per_fake.mean()
    l_f1 = torch.clamp(d_id - d_fake + margin, min=0)
    l_f2 = d_id
    return l_f1 + l_f2, l_f1, l_f2


# ---------------------------------------------------------------- what a UI draws


def epoch_label(step: int, per_epoch: int, epochs: int | None = None) -> str:
    """Where a run is after `step` scheduled steps of `per_epoch` (I_G + I_F) each: the one wording of "the
    epoch shown" for the timeline, the charts' titles, the job's status line and status.json, so that they
    never disagree. Inside an epoch it names the epoch in progress, counted from 1, and its steps done
    ("epoch 3 of 15 · step 40"); on a boundary the epoch just completed ("end of epoch 2"), which is what a
    snapshot taken there shows; step 0 is M_R itself."""
    if step <= 0:
        return "start (M_F = M_R)"
    of = f" of {epochs}" if epochs else ""
    epoch, done = divmod(step, max(1, per_epoch))
    return f"end of epoch {epoch}{of}" if done == 0 else f"epoch {epoch + 1}{of} · step {done}"


@dataclass(frozen=True)
class Features:
    """Penultimate features of the three probe sets under one model: ID test images, OOD images and
    the generator's samples for a fixed z (rows are samples)."""

    id: torch.Tensor
    ood: torch.Tensor
    gen: torch.Tensor


@dataclass(frozen=True)
class Snapshot:
    """One frame of a run: everything the Fig. 5 panels, the generator grid and the curves draw.

    `before` is M_R, `after` is M_F at `epoch`. Note that before.gen moves too: it is M_R's view of
    the generator's *current* samples. Saved in run folders as a plain dict of tensors (to_dict),
    so that torch.load(weights_only=True) can read it back."""

    epoch: int
    labels: torch.Tensor          # classes of the ID probe images
    before: Features
    after: Features
    gen_images: torch.Tensor      # uint8 (n, C, H, W)
    head: torch.Tensor            # the frozen last layer's weight: class directions
    history: tuple[dict, ...]     # one record per finished epoch, epoch 0 first
    step: int = 0                 # scheduled steps of Algorithm 1 done since the start (frames are keyed by it)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "labels": self.labels, "gen_images": self.gen_images, "head": self.head,
                "history": [dict(h) for h in self.history],
                **{f"{which}_{role}": getattr(getattr(self, which), role)
                   for which in ("before", "after") for role in ("id", "ood", "gen")}}

    @classmethod
    def from_dict(cls, d: dict) -> "Snapshot":
        """The inverse of to_dict; also reads the flat keys of runs recorded before this class existed."""
        if "id_ref" in d:  # older runs: id_ref / id_now ...
            d = {**d, "labels": d["id_labels"], **{f"{new}_{role}": d[f"{role}_{old}"]
                                                   for new, old in (("before", "ref"), ("after", "now"))
                                                   for role in ("id", "ood", "gen")}}
        return cls(epoch=int(d["epoch"]), step=int(d.get("step", 0)), labels=d["labels"],
                   before=Features(d["before_id"], d["before_ood"], d["before_gen"]),
                   after=Features(d["after_id"], d["after_ood"], d["after_gen"]),
                   gen_images=d["gen_images"], head=d["head"], history=tuple(d["history"]))


# ---------------------------------------------------------------- the engine


class AdvFT:
    """One AdvFT run: reference M_R, protected M_F, generator G, their optimisers and counters."""

    def __init__(self, reference: nn.Module, config: AdvFTConfig, data: Dataset, ood: ImageSet,
                 device: torch.device | str = "cpu"):
        self.config = config.validate()
        self.device = torch.device(device)
        self.data = data
        torch.manual_seed(config.seed)  # generator initialisation
        self.reference = copy.deepcopy(reference).to(self.device).eval().requires_grad_(False)
        self.model = copy.deepcopy(reference).to(self.device).eval()
        self.model.head.requires_grad_(False)  # Algorithm 1, line 2: the last layer is frozen
        self.generator = Generator(config.latent_dim, data.shape, config.gen_width).to(self.device)
        self.model_params = [p for p in self.model.parameters() if p.requires_grad]
        self.rng = torch.Generator().manual_seed(config.seed + 1)  # batches and noise

        # Position in Algorithm 1 and per-epoch loss sums.
        self.epoch = 0
        self.g_done = 0
        self.f_done = 0
        self._sums = {"l_g": 0.0, "l_f": 0.0, "l_f1": 0.0, "l_f2": 0.0}
        self.last_losses: dict[str, float] = {}
        self.history: list[dict] = []
        self.seconds = 0.0

        # Fixed sets for metrics and plots (same every epoch, so the pictures are comparable).
        fixed = torch.Generator().manual_seed(config.seed + 2)
        train_idx = torch.randperm(len(data.x_train), generator=fixed)[:config.eval_train_size]
        self.evaluator = Evaluator(self.reference, data.x_test, data.y_test, data.x_train[train_idx],
                                   ood.x[:config.eval_ood_size], self.device)
        probe_idx = stratified_indices(data.y_test, config.probe_size, seed=config.seed)
        self.probe_id, self.probe_id_labels = data.x_test[probe_idx], data.y_test[probe_idx]
        self.probe_ood = ood.x[:config.probe_size]
        self.ood_source = ood.source
        self.fixed_z = torch.randn(16, config.latent_dim, generator=fixed)
        self._ref_probe = {"id": outputs(self.reference, self.probe_id, self.device)[0],
                           "ood": outputs(self.reference, self.probe_ood, self.device)[0]}
        # Epoch 0: M_F is still a copy of M_R, so its record follows from M_R's outputs alone.
        self.history.append({"epoch": 0, **self.evaluator.identical(), "seconds": 0.0})

    def retune(self, config: AdvFTConfig) -> None:
        """Take `config`'s training knobs before the first step. The trainer is then the one
        `config` would have built: building reads only BUILD_FIELDS (which must match) and the optimisers
        are built on first use. Lets an app build a trainer ahead of Start (app.jobs.WorkerPool)."""
        config = config.validate()
        changed = [f for f in BUILD_FIELDS if getattr(config, f) != getattr(self.config, f)]
        if changed:
            raise ConfigError(f"retune cannot change {', '.join(changed)}: build a new trainer")
        if self.steps_done or self.epoch or {"opt_g", "opt_f", "sched_f"} & self.__dict__.keys():
            raise ConfigError("retune is only possible before the first step")
        self.config = config

    # ------------------------------------------------------------ optimisers, built on first use:
    # the first optimiser of a process imports torch._dynamo (~1.6 s on a 2-core CPU), which a
    # trainer that is only asked for its epoch-0 snapshot (the app's preview of M_R) never needs.
    @functools.cached_property
    def opt_g(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.generator.parameters(), lr=self.config.lr_g)

    @functools.cached_property
    def opt_f(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.model_params, lr=self.config.lr_f)

    @functools.cached_property
    def sched_f(self) -> torch.optim.lr_scheduler.LambdaLR:
        total = self.config.epochs * self.config.i_f
        cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(self.opt_f, cosine if self.config.lr_schedule == "cosine"
                                                 else (lambda s: 1.0))

    # ------------------------------------------------------------ steps
    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    @property
    def phase(self) -> str:
        """'G' while the generator steps of this epoch are due, then 'F'."""
        return "G" if self.g_done < self.config.i_g else "F"

    def _noise(self) -> torch.Tensor:
        return torch.randn(self.config.batch_size, self.config.latent_dim, generator=self.rng).to(self.device)

    def step_generator(self) -> float:
        """One update of G on eq. (1). Gradients flow through both models to the input only."""
        x = self.generator(self._noise())
        loss = generator_loss(self.model.features(x), self.reference.features(x), self.config.distance)
        self._check(loss, "L_G")
        grads = torch.autograd.grad(loss, list(self.generator.parameters()))
        for p, g in zip(self.generator.parameters(), grads):
            p.grad = g
        self.opt_g.step()
        value = loss.item()
        self.last_losses["l_g"] = value
        return value

    def step_model(self) -> dict[str, float]:
        """One update of M_F on eq. (3): an ID batch and a generated batch, one forward pass each model."""
        bs = self.config.batch_size
        idx = torch.randint(len(self.data.x_train), (bs,), generator=self.rng)
        x_id = to_float(self.data.x_train[idx]).to(self.device)
        with torch.no_grad():
            x = torch.cat([x_id, self.generator(self._noise())])
            f_ref = self.reference.features(x)
        f = self.model.features(x)
        loss, l1, l2 = fine_tune_loss(f[:bs], f_ref[:bs], f[bs:], f_ref[bs:], self.config.margin,
                                      self.config.distance, self.config.fake_reduce)
        self._check(loss, "L_F")
        sched = self.sched_f  # built (with opt_f) before the first optimiser step, as LambdaLR expects
        self.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_f.step()
        sched.step()
        values = {"l_f": loss.item(), "l_f1": l1.item(), "l_f2": l2.item()}
        self.last_losses.update(values)
        return values

    def step(self) -> dict | None:
        """The next step in Algorithm 1's order; returns the epoch's record when it completes one."""
        if self.finished:
            return None
        t0 = time.perf_counter()
        # Only these scheduled steps count in the epoch's mean losses; a UI may call step_generator()
        # or step_model() on their own as extra updates ("step G / step D") without skewing them.
        if self.phase == "G":
            self._sums["l_g"] += self.step_generator()
            self.g_done += 1
        else:
            for k, v in self.step_model().items():
                self._sums[k] += v
            self.f_done += 1
        self.seconds += time.perf_counter() - t0
        if self.f_done >= self.config.i_f:
            return self._end_epoch()
        return None

    def run_epoch(self, should_stop=lambda: False) -> dict | None:
        """Steps to the end of the current epoch; None if should_stop() interrupted it."""
        while not self.finished:
            if should_stop():
                return None
            record = self.step()
            if record is not None:
                return record
        return None

    def _check(self, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{name} became {loss.detach().item()} at epoch {self.epoch + 1}; lower the learning rates or the margin")

    def _end_epoch(self) -> dict:
        t0 = time.perf_counter()
        losses = {k: self._sums[k] / max(1, self.config.i_g if k == "l_g" else self.config.i_f)
                  for k in self._sums}
        self.epoch += 1
        self.g_done = self.f_done = 0
        self._sums = dict.fromkeys(self._sums, 0.0)
        record = self._record(losses)
        self.seconds += time.perf_counter() - t0
        record["seconds"] = self.seconds
        self.history.append(record)
        return record

    def _record(self, losses: dict) -> dict:
        return {"epoch": self.epoch, **losses, **self.evaluator(self.model), "seconds": self.seconds}

    # ------------------------------------------------------------ reporting
    def metrics(self) -> dict:
        """Final metrics: the last epoch's, with KL_train over the whole training set."""
        out = dict(self.history[-1])
        _, l_ref = outputs(self.reference, self.data.x_train, self.device)
        _, l_new = outputs(self.model, self.data.x_train, self.device)
        out["kl_train"] = kl_divergence(l_ref, l_new)
        out["epochs_done"] = self.epoch
        return out

    @torch.no_grad()
    def snapshot(self) -> "Snapshot":
        """What a UI draws now: the probe features under M_R and M_F, G's samples, the history."""
        gen = self.generator(self.fixed_z.to(self.device))
        return Snapshot(
            epoch=self.epoch,
            labels=self.probe_id_labels,
            before=Features(self._ref_probe["id"], self._ref_probe["ood"], self.reference.features(gen).cpu()),
            after=Features(outputs(self.model, self.probe_id, self.device)[0],
                           outputs(self.model, self.probe_ood, self.device)[0], self.model.features(gen).cpu()),
            gen_images=(gen.cpu().clamp(0, 1) * 255).round().to(torch.uint8),
            head=self.model.head.weight.detach().cpu().clone(),
            history=tuple(dict(h) for h in self.history),
            step=self.steps_done,
        )

    @property
    def steps_done(self) -> int:
        """Scheduled steps done since the start of the run (extra G/F updates not counted)."""
        return self.epoch * (self.config.i_g + self.config.i_f) + self.g_done + self.f_done

    # ------------------------------------------------------------ save / resume
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "epoch": self.epoch, "g_done": self.g_done, "f_done": self.f_done,
            "sums": dict(self._sums), "seconds": self.seconds, "history": self.history,
            "model": self.model.state_dict(), "generator": self.generator.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_f": self.opt_f.state_dict(),
            "sched_f": self.sched_f.state_dict(), "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        # from_dict: a state saved before a config field existed reads back with that field's default
        if asdict(self.config) != asdict(AdvFTConfig.from_dict(state["config"])):
            raise ConfigError("the saved state was made with a different configuration")
        self.model.load_state_dict(state["model"])
        self.generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_f.load_state_dict(state["opt_f"])
        self.sched_f.load_state_dict(state["sched_f"])
        self.rng.set_state(state["rng"])
        self.epoch, self.g_done, self.f_done = state["epoch"], state["g_done"], state["f_done"]
        self._sums, self.seconds = dict(state["sums"]), state["seconds"]
        self.history = [dict(h) for h in state["history"]]
