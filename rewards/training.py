"""Training the shapes reward model with Bradley–Terry-with-ties on corrupted pairs.

Each pair shows the same clip (same attributes and start) twice, corrupted on
one axis at two severities (0 = clean): the less corrupted side wins on that
axis, equal severities tie. Only that axis is labelled; the others carry no
label (a pair says nothing about them), so no head is pulled towards constant. Loss (Rao–Kupper, k = 5):
non-tie  -log σ(r_w - r_l - ln k);
tie      -log σ(r_A - r_B - ln k) - log σ(r_B - r_A - ln k) - ln(k² - 1).

Departure: the world labels every clip for free, so the TA head's attribute
classifier also gets a cross-entropy on the clean clip behind each pair
(``attribute_loss`` weight). Pairwise preferences alone left it near chance
after 2,000 steps (colour 0.18, direction 0.16 on held-out clips).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genrl.methods.common import GeneratorState, OptimConfig, adamw
from genrl.models.registry import save_weights
from genrl.registry import RECIPES, Recipe
from genrl.train.trainer import Method, StepContext, TrainConfig
from genrl.worlds.shapes import ShapesWorld, WorldConfig

from .base import AXES
from .corruptions import MQ_KINDS, VQ_KINDS, mq_corrupt, ta_corrupt, vq_corrupt
from .shapes import ShapesReward, ShapesRewardConfig


def bt_ties_loss(r_a: torch.Tensor, r_b: torch.Tensor, label: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """Per-pair Bradley–Terry-with-ties loss. label: +1 A wins, -1 B wins, 0 tie."""
    lnk = math.log(k)
    d = r_a - r_b
    win = -F.logsigmoid(d * label - lnk)
    tie = -F.logsigmoid(d - lnk) - F.logsigmoid(-d - lnk) - math.log(k * k - 1)
    return torch.where(label == 0, tie, win)


def bt_ties_predict(r_a: torch.Tensor, r_b: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """Most likely outcome under the model: +1, -1 or 0 (tie)."""
    lnk, d = math.log(k), r_a - r_b
    p_a, p_b = torch.sigmoid(d - lnk), torch.sigmoid(-d - lnk)
    p_tie = 1 - p_a - p_b
    return torch.stack((p_b, p_tie, p_a), dim=-1).argmax(dim=-1) - 1


@dataclass
class PairBatch:
    a: torch.Tensor
    b: torch.Tensor
    prompts: list[str]
    labels: dict[str, torch.Tensor]
    """Axis -> (B,) outcome: +1 A wins, -1 B wins, 0 tie."""
    axis: list[str]
    """The axis each pair's corruption targets."""
    clean: torch.Tensor
    """The uncorrupted clip behind each pair."""
    attrs: torch.Tensor
    """Its attribute indices (B, 6)."""


def make_pairs(world: ShapesWorld, split: str, n: int, g: torch.Generator, tie_prob: float = 0.2,
               axis_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> PairBatch:
    """``n`` pairs, each corrupted on one random axis (drawn with ``axis_probs``) at two severities."""
    attrs, starts = world.random_attributes(split, n, g)
    prompts = world.captions(attrs)
    clean = world.render(attrs, starts)
    a_list, b_list, axes, labels = [], [], [], {ax: torch.zeros(n) for ax in AXES}
    for i in range(n):
        axis = AXES[int(torch.multinomial(torch.tensor(axis_probs), 1, generator=g))]
        axes.append(axis)
        sa = int(torch.randint(4, (1,), generator=g))
        sb = sa if torch.rand(1, generator=g).item() < tie_prob else int(torch.randint(4, (1,), generator=g))
        va, vb = _corrupt_pair(world, clean[i : i + 1], attrs[i : i + 1], starts[i : i + 1], axis, sa, sb, g)
        a_list.append(va)
        b_list.append(vb)
        labels[axis][i] = float((sb > sa) - (sa > sb))
    return PairBatch(torch.cat(a_list), torch.cat(b_list), prompts, labels, axes, clean, attrs)


def _corrupt_pair(world, clean, attrs, starts, axis, sa, sb, g):
    if axis == "ta":
        return ta_corrupt(world, attrs, starts, sa, g), ta_corrupt(world, attrs, starts, sb, g)
    # one corruption kind for both sides: severities of different kinds (a 1-px jitter against
    # a 12-px teleport) have no common scale, so comparing them would be a label with no truth
    kinds, fn = (VQ_KINDS, vq_corrupt) if axis == "vq" else (MQ_KINDS, mq_corrupt)
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
    return fn(clean, kind, sa, g), fn(clean, kind, sb, g)


@torch.no_grad()
def pair_accuracy(model: ShapesReward, world: ShapesWorld, n: int = 512, seed: int = 12345, split: str = "test") -> dict[str, float]:
    """Held-out pairwise accuracy per axis: non-tie (r_w > r_l) and 3-way with ties."""
    g = torch.Generator().manual_seed(seed)
    hits = {a: [] for a in AXES}
    hits_ties = {a: [] for a in AXES}
    for lo in range(0, n, 64):
        batch = make_pairs(world, split, min(64, n - lo), g)
        ra, rb = model.raw_scores(batch.a, batch.prompts), model.raw_scores(batch.b, batch.prompts)
        for ax in AXES:
            lab = batch.labels[ax]
            axis_pairs = [i for i, a in enumerate(batch.axis) if a == ax]
            d = ra[ax] - rb[ax]
            hits[ax] += [(float(d[i]) * float(lab[i]) > 0) for i in axis_pairs if lab[i] != 0]
            pred = bt_ties_predict(ra[ax], rb[ax])
            hits_ties[ax] += [bool(pred[i] == lab[i]) for i in axis_pairs]
    out = {}
    for ax in AXES:
        out[f"{ax}_accuracy"] = sum(hits[ax]) / max(1, len(hits[ax]))
        out[f"{ax}_accuracy_with_ties"] = sum(hits_ties[ax]) / max(1, len(hits_ties[ax]))
    return out


def calibration_set(world: ShapesWorld, n: int = 768, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Reference clips for the z-scores: val clips, each corrupted on one axis at severity 0-3.

    Clean clips alone made a poor reference: the TA head is near-certain on them, so the
    spread was tiny and any mismatch scored around z = -150, which is useless as an
    exp(beta * z) rollout weight. Against this mix, z = 0 is a typical clip of mixed quality
    and clean clips score above it.
    """
    batch = make_pairs(world, "val", n, torch.Generator().manual_seed(seed), tie_prob=0.0)
    return batch.a, batch.prompts


@dataclass
class RewardMethodConfig:
    """Shapes reward model training."""

    model: ShapesRewardConfig = field(default_factory=ShapesRewardConfig)
    batch_size: int = 32
    """Pairs per micro-batch."""
    tie_prob: float = 0.2
    """Probability that a pair has equal severities (a tie on its axis)."""
    k: float = 5.0
    """Rao–Kupper tie parameter."""
    eval_pairs: int = 512
    """Held-out test-split pairs for the accuracy figures."""
    axis_probs: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.4])
    """How often a pair targets VQ, MQ, TA (VQ is the easiest to learn)."""
    attribute_loss: float = 1.0
    """Weight of the attribute cross-entropy on clean clips (0 = pairs only)."""


class RewardMethod(Method):
    name = "reward"

    def __init__(self, cfg: RewardMethodConfig, optim: OptimConfig, world: ShapesWorld, seed: int):
        self.cfg, self.world = cfg, world
        self.model = ShapesReward(cfg.model)
        self.opt, self.sched = adamw(self.model.parameters(), optim)
        self.data = GeneratorState(seed)

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        g = self.data.generator

        def micro(_: int) -> torch.Tensor:
            batch = make_pairs(self.world, "train", self.cfg.batch_size, g, self.cfg.tie_prob, tuple(self.cfg.axis_probs))
            ra, rb = self.model.raw_scores(batch.a, batch.prompts), self.model.raw_scores(batch.b, batch.prompts)
            losses = []
            for a in AXES:
                mine = torch.tensor([x == a for x in batch.axis])
                if mine.any():
                    losses.append(bt_ties_loss(ra[a][mine], rb[a][mine], batch.labels[a][mine], self.cfg.k).sum())
            loss = torch.stack(losses).sum() / len(batch.axis)
            if self.cfg.attribute_loss:
                logp = self.model.attribute_logprobs(self.model.video_features(batch.clean))
                ce = torch.stack([F.nll_loss(lp, batch.attrs[:, i]) for i, lp in enumerate(logp)]).mean()
                loss = loss + self.cfg.attribute_loss * ce
            return loss

        return ctx.optimize(self.opt, self.model.parameters(), micro, self.sched)

    def checkpoint_modules(self):
        return {"reward": self.model}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        return pair_accuracy(self.model, self.world, self.cfg.eval_pairs)

    def export(self, run_dir: Path) -> Path:
        self.model.calibrate(*calibration_set(self.world))
        return save_weights(self.model, run_dir / "model.safetensors", "shapes_reward", self.cfg.model)


# ---------------------------------------------------------------------- recipe
@dataclass
class TrainRewardConfig:
    """`genrl train-reward` recipe."""

    out_dir: str = "runs/reward"
    """Run folder."""
    world: WorldConfig = field(default_factory=WorldConfig)
    reward: RewardMethodConfig = field(default_factory=RewardMethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build(cfg: TrainRewardConfig, quiet: bool = False) -> RewardMethod:
    return RewardMethod(cfg.reward, cfg.optim, ShapesWorld(cfg.world), cfg.train.seed)


def run(cfg: TrainRewardConfig, quiet: bool = False) -> dict:
    """Train, export (calibrated), and return the last held-out pair accuracies."""
    from genrl.train.trainer import Trainer, read_metrics, seed_everything

    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg.train, build(cfg), Path(cfg.out_dir), full_config=cfg, quiet=quiet)
    trainer.fit()
    rows = [r for r in read_metrics(cfg.out_dir) if "vq_accuracy" in r]
    return {"is_main": trainer.is_main, "accuracy": {k: v for k, v in (rows[-1] if rows else {}).items() if "accuracy" in k}}


RECIPES.register("train-reward", Recipe("train-reward", TrainRewardConfig, build, run))
