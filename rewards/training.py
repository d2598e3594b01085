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

Corruptions of real clips are not what a distilled generator gets wrong, so a reward
trained on them alone tells a student's good videos from its bad ones poorly. With
``reward.generated.generators`` set, part of every batch (``share``) are pairs of
*generated* clips of one train-split prompt, judged by the attribute probe the way
annotators judge a real model's videos (VideoAlign's human preference pairs):
VQ by how many frames hold one coherent object, MQ by the named direction and
speed, TA by the named colour, shape, size and background. Such a pair carries a
label on all three axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from genrl.config import check
from genrl.methods.common import GeneratorState, OptimConfig, adamw
from genrl.models.registry import load_model, save_weights
from genrl.progress import track
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


# ------------------------------------------------------------- generated pairs
LOOKS = ("colour", "shape", "size", "background")
MOVES = ("direction", "speed")


def probe_scores(results, captions: list[str]) -> torch.Tensor:
    """(N, 3) per-clip VQ, MQ, TA grades from probe reads: VQ the share of frames with one coherent object
    in quarters (0-4); MQ and TA the number of the caption's motion (0-2) and look (0-4) attributes read
    back, -1 for a clip the probe cannot read. Equal grades tie."""
    from genrl.worlds.shapes import parse_caption

    rows = []
    for r, cap in zip(results, captions):
        want = parse_caption(cap)
        vq = float(int(r.coherent_frames * 4 + 1e-6))
        mq = float(sum(r.attributes[a] == want[a] for a in MOVES)) if r.readable else -1.0
        ta = float(sum(r.attributes[a] == want[a] for a in LOOKS)) if r.readable else -1.0
        rows.append((vq, mq, ta))
    return torch.tensor(rows)


@dataclass
class GeneratedPairsConfig:
    """Pairs of generated clips judged by the probe (off while ``generators`` is empty)."""

    generators: list[str] = field(default_factory=list)
    """Models whose clips make the pairs (built-in names, files or run folders), e.g. the students a
    Stream-R1 run will start from and become."""
    prompts: int = check(1024, ">=1")
    """Train-split prompts; each gets ``seeds`` clips from every generator."""
    seeds: int = check(2, ">=1")
    """Clips per prompt and generator (different noise)."""
    share: float = check(0.5, "(0, 1]")
    """Fraction of each batch's pairs drawn from generated clips (the rest: corrupted real clips)."""
    cross_prompt: float = check(0.5, "[0, 1]")
    """Share of generated pairs whose two clips come from different prompts: these teach the heads one
    scale across prompts, which exp(beta * r) weights over a batch of different prompts rely on (pairs
    of one prompt only teach the order within it)."""


@torch.no_grad()
def generated_pool(path: Path, world: ShapesWorld, cfg: GeneratedPairsConfig, seed: int, quiet: bool = False) -> dict:
    """The run's probe-judged generated clips: loaded from ``path``, or made and stored there (atomically).

    Returns {"videos" (N, F, 3, H, W) uint8, "prompt" (N,) prompt index, "captions", "scores" (N, 3),
    "groups": prompt indices whose clips differ on some axis (only those give a non-tie pair)}.
    """
    if path.exists():
        return torch.load(path)
    from genrl.generation import SamplingConfig, generate
    from genrl.worlds.probe import AttributeProbe

    captions = world.random_prompts("train", cfg.prompts, torch.Generator().manual_seed(seed + 17))
    probe, videos, owner, scores = AttributeProbe(), [], [], []
    jobs = [(name, k, lo) for name in cfg.generators for k in range(cfg.seeds) for lo in range(0, len(captions), 64)]
    models: dict = {}
    for name, k, lo in track(jobs, len(jobs), "generated clips", quiet):
        if name not in models:
            models[name] = load_model(name).eval()
        model = models[name]
        caps = captions[lo : lo + 64]
        clip = generate(model, caps, world.cfg.frames, SamplingConfig(), seed=seed * 7919 + 1009 * k + lo).videos.clamp(0, 1)
        videos.append((clip * 255).round().to(torch.uint8))
        owner += range(lo, lo + len(caps))
        scores.append(probe_scores(probe.read(clip), caps))
    pool = {"videos": torch.cat(videos), "prompt": torch.tensor(owner), "captions": captions, "scores": torch.cat(scores)}
    pool["groups"] = [i for i in range(len(captions)) if len({tuple(r) for r in pool["scores"][pool["prompt"] == i].tolist()}) > 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(pool, tmp)
    tmp.replace(path)
    return pool


def generated_pairs(pool: dict, n: int, g: torch.Generator, cross_prompt: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str], torch.Tensor]:
    """``n`` pairs of distinct generated clips: with probability ``cross_prompt`` any two clips of the pool,
    otherwise two clips of one prompt (among the prompts whose clips disagree on some axis). Returns videos
    A, B in [0, 1], their prompts, and (n, 3) labels (+1 A better, -1 B better, 0 tie) on VQ, MQ, TA."""
    groups, total = pool["groups"], len(pool["prompt"])
    if not groups and cross_prompt < 1.0:
        raise ValueError("every generated clip of every prompt got the same grades: no pair of one prompt says anything")
    a_idx, b_idx = [], []
    for _ in range(n):
        if torch.rand(1, generator=g).item() < cross_prompt:
            members = torch.arange(total)
        else:
            members = torch.nonzero(pool["prompt"] == groups[int(torch.randint(len(groups), (1,), generator=g))]).flatten()
        i, j = torch.randperm(len(members), generator=g)[:2].tolist()
        a_idx.append(int(members[i]))
        b_idx.append(int(members[j]))
    sa, sb = pool["scores"][a_idx], pool["scores"][b_idx]
    labels = (sa > sb).float() - (sb > sa).float()
    a = pool["videos"][a_idx].float() / 255
    b = pool["videos"][b_idx].float() / 255
    prompts = [[pool["captions"][int(pool["prompt"][i])] for i in idx] for idx in (a_idx, b_idx)]
    return a, b, *prompts, labels


def _concordance(grade: torch.Tensor, value: torch.Tensor) -> tuple[float, int]:
    """Over every pair of items with different ``grade``: how many the ``value`` orders the same way (a tie
    in value counts half), and how many such pairs there are."""
    better = grade[:, None] > grade[None, :]
    agree = (value[:, None] > value[None, :]).float() + 0.5 * (value[:, None] == value[None, :]).float()
    return float(agree[better].sum()), int(better.sum())


@torch.no_grad()
def generated_auc(model: ShapesReward, pool: dict) -> dict[str, float]:
    """How well each head ranks the pool's clips by their probe grades: ``generated_{axis}_auc``, the share
    of differently graded clip pairs of one prompt that the head orders like the probe (ties in the head
    count half); ``generated_{axis}_auc_all``, the same over every pair of clips in the pool, any prompts."""
    raw = {ax: [] for ax in AXES}
    for lo in range(0, len(pool["prompt"]), 128):
        clip = pool["videos"][lo : lo + 128].float() / 255
        caps = [pool["captions"][int(i)] for i in pool["prompt"][lo : lo + 128]]
        for ax, v in model.raw_scores(clip, caps).items():
            raw[ax].append(v)
    out = {}
    for k, ax in enumerate(AXES):
        value, grade = torch.cat(raw[ax]), pool["scores"][:, k]
        within = [_concordance(grade[m], value[m]) for m in (pool["prompt"] == i for i in pool["groups"])]
        out[f"generated_{ax}_auc"] = sum(h for h, _ in within) / max(sum(n for _, n in within), 1)
        hits, pairs = _concordance(grade, value)
        out[f"generated_{ax}_auc_all"] = hits / max(pairs, 1)
    return out


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
    init: str = ""
    """Start from these weights (built-in name or file, e.g. shapes-reward) instead of from scratch;
    ``model`` is then read from them."""
    generated: GeneratedPairsConfig = field(default_factory=GeneratedPairsConfig)
    """Pairs of generated clips judged by the probe, mixed into every batch."""


class RewardMethod(Method):
    name = "reward"

    def __init__(self, cfg: RewardMethodConfig, optim: OptimConfig, world: ShapesWorld, seed: int,
                 run_dir: Path | None = None, quiet: bool = False):
        self.cfg, self.world = cfg, world
        self.model = load_model(cfg.init, kind="shapes_reward").requires_grad_(True) if cfg.init else ShapesReward(cfg.model)
        self.opt, self.sched = adamw(self.model.parameters(), optim)
        self.data = GeneratorState(seed)
        self.pool = None
        if cfg.generated.generators:
            self.pool = generated_pool(Path(run_dir or ".") / "generated.pt", world, cfg.generated, seed, quiet)

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        g = self.data.generator

        n_gen = round(self.cfg.batch_size * self.cfg.generated.share) if self.pool is not None else 0

        def micro(_: int) -> torch.Tensor:
            batch = make_pairs(self.world, "train", max(self.cfg.batch_size - n_gen, 1), g, self.cfg.tie_prob,
                               tuple(self.cfg.axis_probs))
            ra, rb = self.model.raw_scores(batch.a, batch.prompts), self.model.raw_scores(batch.b, batch.prompts)
            losses = []
            for a in AXES:
                mine = torch.tensor([x == a for x in batch.axis])
                if mine.any():
                    losses.append(bt_ties_loss(ra[a][mine], rb[a][mine], batch.labels[a][mine], self.cfg.k).sum())
            if n_gen:  # generated pairs: a label on every axis, each axis weighted like one corrupted pair's
                a, b, pa, pb, labels = generated_pairs(self.pool, n_gen, g, self.cfg.generated.cross_prompt)
                ga, gb = self.model.raw_scores(a, pa), self.model.raw_scores(b, pb)
                losses += [bt_ties_loss(ga[ax], gb[ax], labels[:, k], self.cfg.k).sum() / len(AXES)
                           for k, ax in enumerate(AXES)]
            loss = torch.stack(losses).sum() / (len(batch.axis) + n_gen)
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
        out = pair_accuracy(self.model, self.world, self.cfg.eval_pairs)
        return out | (generated_auc(self.model, self.pool) if self.pool is not None else {})

    def export(self, run_dir: Path) -> Path:
        self.model.calibrate(*calibration_set(self.world))
        return save_weights(self.model, run_dir / "model.safetensors", "shapes_reward", self.model.cfg)


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
    return RewardMethod(cfg.reward, cfg.optim, ShapesWorld(cfg.world), cfg.train.seed, Path(cfg.out_dir), quiet)


def run(cfg: TrainRewardConfig, quiet: bool = False) -> dict:
    """Train, export (calibrated), and return the last held-out pair accuracies."""
    from genrl.train.trainer import Trainer, read_metrics, seed_everything

    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg.train, build(cfg), Path(cfg.out_dir), full_config=cfg, quiet=quiet)
    trainer.fit()
    rows = [r for r in read_metrics(cfg.out_dir) if "vq_accuracy" in r]
    return {"is_main": trainer.is_main,
            "accuracy": {k: v for k, v in (rows[-1] if rows else {}).items() if "accuracy" in k or "auc" in k}}


RECIPES.register("train-reward", Recipe("train-reward", TrainRewardConfig, build, run))
