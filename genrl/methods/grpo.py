"""GRPO for video question answering, and the seed variants as one-hook overrides (`genrl grpo`).

One step: draw ``prompts_per_step`` questions, roll out ``group_size``
answers each with the KV-cached sampler, score them with verifiable task
rewards (accuracy + ``format_weight`` x format), turn rewards into group
advantages, then ``iterations`` clipped-ratio updates with a k3 KL to the
frozen starting policy. The maths are the pure functions of
:mod:`genrl.grpo`; this file only wires them.

**Cached video embeddings** (LongVILA-R1's MR-SP stage 1, ``cache_video``):
the vision tower is frozen during RL and runs once per prompt; rollout,
old/reference log-probs and every update reuse the embeddings. Without the
cache every row of every pass recomputes it, as a plain VLM trainer does.

Variants (``variant``), each overriding one hook of :class:`GRPOMethod`:

- ``t_grpo`` (Video-R1): extra rollouts on frame-shuffled videos; correct
  answers gain ``alpha`` when ordered frames answer at least ``mu`` x as well.
  Departure: the shuffled rollouts only feed the bonus (as in Video-R1) and
  are drawn per prompt with one permutation.
- ``tw_grpo`` (TW-GRPO): token weights from each rollout's divergence to the
  group's mean next-token distribution; choice questions are inverted
  ("which options are not right") with probability ``inversion_prob`` and
  scored by the soft multi-choice reward.
- ``reg_grpo`` (DeepVideo-R1): regression of the ratio onto the advantage
  instead of the clipped surrogate; groups that are all right (too easy) are
  rolled again on noised videos, all wrong (too hard) with a hint in the
  question, so they carry an advantage.
- ``tg_grpo`` (VideoTG-R1's curriculum, for the grounding questions): each
  question's difficulty is estimated from its own group (1 - mean accuracy
  reward of the current policy's rollouts); a hard one is rolled again on its
  video with a share of the frames outside the answer's span blanked, a share
  that falls linearly to 0 over ``curriculum.decay_steps``, so hard samples
  first give a preference signal and later are met whole. Departure: the
  difficulty is estimated online, per step, not once by a separate model over
  a fixed dataset (the shapes world draws new questions every step).
- ``veripo`` (VerIPO): a GRPO -> verifier -> DPO loop. Each cycle runs
  ``veripo.grpo_steps`` GRPO steps; the rollout-aware verifier
  (:func:`genrl.methods.qa.verify`: every attribute the think block claims is
  true of the clip and the answer agrees with it) picks from each group a
  chosen rollout (right answer, verified reasoning) and a rejected one (right
  answer on unverified reasoning first, else a wrong answer); then
  ``veripo.dpo_steps`` DPO steps on those pairs, and the pairs are dropped.
  Departure: the verifier is a rule, not a small LLM judge, and the DPO
  reference is the frozen starting policy (the GRPO KL reference), so a run
  resumes exactly at any step.
- ``thinker`` (Video-Thinker): from an SFT start on grounded traces
  (``qa.thinker``), each rollout's reward adds ``thinker.clue_weight`` x the
  clue reward: its ``<time>`` spans and ``<caption>`` words against what is on
  screen when (``rewards.tasks.clue_reward``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..registry import TASK_REWARDS

from .. import grpo as G
from ..config import check
from ..models.hf_vlm import QwenVLPolicy
from ..models.vlm import TinyVLM
from ..train.trainer import Method, Role, StepContext
from ..worlds.qa import QAConfig, QAItem, ShapesQA, invert, mask_outside, with_hint
from .common import GeneratorState, OptimConfig, adamw
from .qa import (MAX_NEW_TOKENS, accuracy_metrics, accuracy_reward_name, evaluate_qa, fit_vocabulary, load_policy,
                 prompts, save_policy)

Policy = TinyVLM | QwenVLPolicy

@dataclass
class TGRPOConfig:
    """Video-R1 temporal GRPO."""

    alpha: float = 0.3
    """Bonus added to correct answers when frame order helped."""
    mu: float = check(0.8, ">0")
    """Threshold: the bonus applies when ordered accuracy reaches mu x shuffled accuracy
    (Video-R1's value, 0.8)."""
    shuffled: int = 4
    """Rollouts per prompt on frame-shuffled videos."""


@dataclass
class TWGRPOConfig:
    """TW-GRPO token weighting and soft multi-choice."""

    alpha: float = 2.0
    """Weight of the most divergent position (least: 1)."""
    weights: str = check("published", "one of: published, per_rollout")
    """'published': one weight per position shared by the group (geometric-mean reference, k3-style
    divergence summed over the vocabulary, min-max over positions; use loss: bnpo); 'per_rollout':
    genrl's earlier form (KL to the arithmetic mean, normalised within each rollout)."""
    inversion_prob: float = 0.3
    """Chance a choice question is inverted into a several-answer one."""
    soft_reward: bool = True
    """Score several-answer questions with the soft multi-choice reward (else exact match)."""


@dataclass
class RegGRPOConfig:
    """DeepVideo-R1 regression GRPO with difficulty-aware augmentation."""

    noise_std: float = 0.25
    """Pixel noise added to the videos of too-easy groups."""
    augment: bool = True
    """Re-roll saturated groups (all right: noised video; all wrong: hinted question)."""


@dataclass
class CurriculumConfig:
    """VideoTG-R1 difficulty-aware curriculum masking (``variant: tg_grpo``)."""

    hard_below: float = check(0.3, "[0, 1]")
    """A question whose group's mean accuracy reward is below this is hard."""
    mask_ratio: float = check(0.75, "[0, 1]")
    """Share of the frames outside the answer's span blanked for a hard question at step 0."""
    decay_steps: int = check(200, ">=1")
    """The share falls linearly to 0 by this step."""


@dataclass
class VerIPOConfig:
    """VerIPO's GRPO -> verifier -> DPO loop (``variant: veripo``)."""

    grpo_steps: int = check(20, ">=1")
    """GRPO steps of a cycle (their rollouts feed the verifier)."""
    dpo_steps: int = check(10, ">=0")
    """DPO steps of a cycle, on the pairs its GRPO steps left."""
    dpo_batch: int = check(16, ">=1")
    """Pairs per DPO step (drawn from the cycle's pairs)."""
    dpo_beta: float = check(0.1, ">0")
    """DPO's beta."""
    nll_weight: float = check(0.0, ">=0")
    """Weight of the chosen completions' mean token NLL added to the DPO loss (RPO's regulariser against DPO
    lowering the chosen answers too); 0 is plain DPO."""


@dataclass
class ThinkerConfig:
    """Video-Thinker's clue reward (``variant: thinker``)."""

    clue_weight: float = check(0.5, ">=0")
    """Weight of the clue reward next to accuracy and format."""


@dataclass
class GRPOMethodConfig:
    """GRPO on shapes video QA."""

    variant: str = "grpo"
    """'grpo', 't_grpo' (Video-R1), 'tw_grpo' (TW-GRPO), 'reg_grpo' (DeepVideo-R1), 'tg_grpo' (VideoTG-R1's
    curriculum for grounding questions), 'veripo' (VerIPO's GRPO -> verifier -> DPO loop) or 'thinker'
    (Video-Thinker's clue reward)."""
    policy: str = "shapes-vlm-sft"
    """Starting policy, also the frozen KL reference: genrl VLM weights (name or path) or a local
    transformers Qwen2-VL / Qwen2.5-VL folder (config.json, weights, tokenizer files)."""
    policy_dtype: str = "float32"
    """Weights dtype of a transformers policy: 'float32', 'bfloat16' or 'float16'."""
    qa: QAConfig = field(default_factory=QAConfig)
    prompts_per_step: int = check(8, ">=1")
    """Questions per step."""
    group_size: int = check(8, ">=2")
    """Rollouts per question (G)."""
    max_new_tokens: int = check(MAX_NEW_TOKENS, ">=1")
    """Longest completion sampled (the SFT format needs up to 11 tokens with <eos>)."""
    temperature: float = check(1.0, ">0")
    """Sampling temperature of the rollouts."""
    iterations: int = check(1, ">=1")
    """Updates per rollout batch (the mu of GRPO); > 1 uses the rollout policy's log-probs as old."""
    beta: float = check(0.04, ">=0")
    """Weight of the k3 KL to the reference (0 = no reference pass)."""
    eps_low: float = check(0.2, "[0, 1]")
    """Lower clip of the ratio: at 1 - eps_low (see eps_high)."""
    eps_high: float = check(0.2, ">=0")
    """Clip range of the ratio: [1 - eps_low, 1 + eps_high] (DAPO raises eps_high)."""
    scale: str = check("group", "one of: group, batch, none")
    """Advantage scaling: 'group' std, 'batch' std or 'none' (Dr. GRPO)."""
    loss: str = check("grpo", "one of: grpo, bnpo, dr_grpo, dapo")
    """Loss aggregation: 'grpo', 'bnpo', 'dr_grpo' or 'dapo'."""
    format_weight: float = check(0.5, ">=0")
    """Weight of the format reward next to accuracy."""
    cache_video: bool = True
    """Encode each video once per prompt group and reuse it (MR-SP stage 1)."""
    train_vision: bool = False
    """Update the vision tower too; needs ``cache_video: false`` (cached embeddings would go stale), so
    every update pass runs the tower with gradients."""
    eval_num: int = check(256, ">=0")
    """Held-out (test split) questions scored at each sample step."""
    t_grpo: TGRPOConfig = field(default_factory=TGRPOConfig)
    tw_grpo: TWGRPOConfig = field(default_factory=TWGRPOConfig)
    reg_grpo: RegGRPOConfig = field(default_factory=RegGRPOConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    veripo: VerIPOConfig = field(default_factory=VerIPOConfig)
    thinker: ThinkerConfig = field(default_factory=ThinkerConfig)


@dataclass
class Rollouts:
    """A step's rollouts: P prompts x G rows, prompt-major."""

    videos: torch.Tensor  # (P, F, 3, H, W)
    items: list[QAItem]  # (P,)
    video_emb: torch.Tensor | None  # (P, V, D) when cached
    prompt_ids: torch.Tensor  # (N, L)
    prompt_mask: torch.Tensor
    ids: torch.Tensor  # (N, T)
    mask: torch.Tensor
    accuracy: torch.Tensor  # (N,)
    fmt: torch.Tensor  # (N,)
    rewards: torch.Tensor  # (N,)
    texts: list[str] | None = None  # (N,) the decoded completions the rewards read


class GRPOMethod(Method):
    name = "grpo"
    regression = False  # Reg-GRPO's hook

    def __init__(self, cfg: GRPOMethodConfig, optim: OptimConfig, seed: int, policy: Policy | None = None):
        for key, value, valid in (("scale", cfg.scale, G.SCALES), ("loss", cfg.loss, G.AGGREGATIONS)):
            if value not in valid:
                raise ValueError(f"config key '{key}' is {value!r}; valid: {', '.join(valid)}")
        self.cfg = cfg
        self.qa = ShapesQA(cfg.qa)
        self.policy = fit_vocabulary(policy or load_policy(cfg.policy, cfg.qa, cfg.policy_dtype), cfg.qa).train()
        if cfg.train_vision and cfg.cache_video:
            raise ValueError("grpo.train_vision needs grpo.cache_video=false: cached embeddings go stale once the "
                             "vision tower changes")
        self.policy.visual.requires_grad_(cfg.train_vision)  # frozen by default, as the cache requires
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False) if cfg.beta else None
        self.opt, self.sched = adamw(self.policy.parameters(), optim)
        self.data = GeneratorState(seed)
        self.vision_rows = 0  # rows the vision tower encoded (cache on: one per prompt)

    # ------------------------------------------------------------------ hooks
    def sample(self) -> tuple[torch.Tensor, list[QAItem]]:
        """The step's videos and questions."""
        return self.qa.random_items("train", self.cfg.prompts_per_step, self.data.generator)

    def adjust(self, ro: Rollouts) -> Rollouts:
        """Change rewards or rollouts after scoring (T-GRPO, Reg-GRPO)."""
        return ro

    def token_weights(self, ro: Rollouts, logits: torch.Tensor) -> torch.Tensor | None:
        """Per-token loss weights (TW-GRPO), None for uniform."""
        return None

    def accuracy_reward(self, item: QAItem, text: str) -> float:
        return TASK_REWARDS.get(accuracy_reward_name(item))(text, item.answer)

    # -------------------------------------------------------------- machinery
    def _encode(self, model: Policy, videos: torch.Tensor, grad: bool = False) -> torch.Tensor:
        self.vision_rows += videos.shape[0]
        with torch.set_grad_enabled(grad):
            return model.encode_video(videos)

    def embeddings(self, ro: Rollouts, model: Policy | None = None, grad: bool = False) -> torch.Tensor:
        """(N, V, D) video embeddings for every row: the cache, or the vision tower again (with
        gradients when ``grad``)."""
        Gs = ro.prompt_ids.shape[0] // len(ro.items)
        if ro.video_emb is not None:
            return ro.video_emb.repeat_interleave(Gs, 0)
        return self._encode(model or self.policy, ro.videos.repeat_interleave(Gs, 0), grad)

    @torch.no_grad()
    def rollout(self, videos: torch.Tensor, items: list[QAItem], group: int | None = None) -> Rollouts:
        """Generate ``group`` answers per question and score them."""
        Gs = group or self.cfg.group_size
        dev = next(self.policy.parameters()).device
        videos = videos.to(dev)
        emb = self._encode(self.policy, videos) if self.cfg.cache_video else None
        p_ids, p_mask = prompts(self.policy, items, dev)
        p_ids, p_mask = p_ids.repeat_interleave(Gs, 0), p_mask.repeat_interleave(Gs, 0)
        ro = Rollouts(videos, items, emb, p_ids, p_mask, *(None,) * 5)
        ro.ids, ro.mask = self.policy.generate(self.embeddings(ro), p_ids, p_mask, self.cfg.max_new_tokens,
                                               self.cfg.temperature, self.data.generator)
        ro.texts = texts = [self.policy.tokenizer.decode(r) for r in ro.ids]
        rows = [it for it in items for _ in range(Gs)]
        ro.accuracy = torch.tensor([self.accuracy_reward(it, t) for it, t in zip(rows, texts)])
        ro.fmt = torch.tensor([TASK_REWARDS.get("format")(t, "") for t in texts])
        ro.rewards = ro.accuracy + self.cfg.format_weight * ro.fmt
        return ro

    def objective(self, ro: Rollouts, adv, old_logp, ref_logp,
                  whole: tuple[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of these rollouts, and its token means (KL, clip fraction). With ``whole`` = (rows,
        completion tokens) of a batch these rollouts are a micro-batch of, both are their share of it."""
        emb = self.embeddings(ro, grad=self.cfg.train_vision)
        logp, logits = self.policy.token_logprobs(emb, ro.prompt_ids, ro.prompt_mask, ro.ids, ro.mask,
                                                  return_logits=True, temperature=self.cfg.temperature)
        old = logp.detach() if old_logp is None else old_logp
        w = self.token_weights(ro, logits)
        loss = G.grpo_loss(logp, old, ref_logp, adv.to(logp.device), ro.mask, self.cfg.beta, self.cfg.eps_low,
                           self.cfg.eps_high, self.cfg.loss, w, self.regression, self.cfg.max_new_tokens, whole)
        m = ro.mask.float()
        tokens = max(float(whole[1] if whole is not None else m.sum()), 1.0)
        stats = {}
        if ref_logp is not None:
            stats["kl"] = float((G.k3_kl(logp.detach(), ref_logp) * m).sum()) / tokens
        ratio = torch.exp(logp.detach() - old)
        clipped = ((ratio < 1 - self.cfg.eps_low) | (ratio > 1 + self.cfg.eps_high)).float()
        stats["clip_fraction"] = float((clipped * m).sum()) / tokens
        return loss, stats

    @torch.no_grad()
    def _logprobs(self, model: Policy, ro: Rollouts) -> torch.Tensor:
        return model.token_logprobs(self.embeddings(ro, model), ro.prompt_ids, ro.prompt_mask, ro.ids, ro.mask,
                                    temperature=self.cfg.temperature)

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        self._step, self._stats = step, {}  # the step a hook may read, and what a hook reports of it
        videos, items = self.sample()
        ro = self.adjust(self.rollout(videos, items))
        adv = G.group_advantages(ro.rewards, self.cfg.group_size, self.cfg.scale)
        # train.grad_accum splits the prompts (each with its whole group) into passes whose losses sum to the
        # batch's: the same gradient, each pass keeping its share of the activations and of the logits
        parts = micro_batches(ro, ctx.cfg.grad_accum)
        whole = (ro.mask.shape[0], ro.mask.sum())
        old = [self._logprobs(self.policy, part) for part, _ in parts] if self.cfg.iterations > 1 else None
        ref = [self._logprobs(self.ref, part) for part, _ in parts] if self.ref is not None else None
        stats: dict[str, float] = {}
        for _ in range(self.cfg.iterations):
            sums: dict[str, float] = {}

            def micro(i: int) -> torch.Tensor:
                part, rows = parts[i]
                loss, part_stats = self.objective(part, adv[rows], None if old is None else old[i],
                                                  None if ref is None else ref[i], whole)
                for k, v in part_stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                return loss

            out = ctx.optimize(self.opt, [p for p in self.policy.parameters() if p.requires_grad], micro, self.sched,
                               parts=len(parts))
            stats = {**out, **sums}
        return {**stats, "reward": float(ro.rewards.mean()), "reward_accuracy": float(ro.accuracy.mean()),
                "reward_format": float(ro.fmt.mean()), "completion_tokens": float(ro.mask.sum(1).float().mean()),
                "zero_advantage_groups": float((ro.rewards.view(-1, self.cfg.group_size).std(1) == 0).float().mean()),
                **self._stats}

    # ------------------------------------------------------------- bookkeeping
    def roles(self):
        roles = {"policy": Role(self.policy, trainable=True)}
        if self.ref is not None:  # frozen, so not checkpointed, but it must sit with the policy
            roles["reference"] = Role(self.ref)
        return roles

    def checkpoint_modules(self):
        return {"policy": self.policy}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}

    def sequence_parallel_models(self):
        return [self.policy] + ([self.ref] if self.ref is not None else [])  # the reference scores the same sequences

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        if not self.cfg.eval_num:
            return {}
        return accuracy_metrics(evaluate_qa(self.policy, "test", self.cfg.eval_num, qa=self.qa), "heldout")

    def shard_trained_refusal(self) -> str | None:
        return None

    def export(self, run_dir: Path, weights: dict[str, dict] | None = None) -> Path:
        return save_policy(self.policy, run_dir, None if weights is None else weights["policy"])


class TGRPOMethod(GRPOMethod):
    """Video-R1 T-GRPO: a bonus for answers that needed the frames in order."""

    name = "t_grpo"

    def adjust(self, ro: Rollouts) -> Rollouts:
        c = self.cfg.t_grpo
        perm = torch.stack([torch.randperm(ro.videos.shape[1], generator=self.data.generator) for _ in ro.items])
        shuffled = torch.stack([v[p] for v, p in zip(ro.videos, perm)])
        sh = self.rollout(shuffled, ro.items, group=c.shuffled)
        bonus = G.temporal_bonus(ro.accuracy.view(len(ro.items), -1) >= 1, sh.accuracy.view(len(ro.items), -1) >= 1, c.alpha, c.mu)
        ro.rewards = ro.rewards + bonus.reshape(-1)
        return ro


class TWGRPOMethod(GRPOMethod):
    """TW-GRPO: divergence-weighted tokens, inverted questions, soft multi-choice reward."""

    name = "tw_grpo"

    def sample(self):
        videos, items = super().sample()
        flip = torch.rand(len(items), generator=self.data.generator) < self.cfg.tw_grpo.inversion_prob
        return videos, [invert(it) if f else it for it, f in zip(items, flip.tolist())]

    def accuracy_reward(self, item: QAItem, text: str) -> float:
        return TASK_REWARDS.get(accuracy_reward_name(item, self.cfg.tw_grpo.soft_reward))(text, item.answer)

    def token_weights(self, ro: Rollouts, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.tw_grpo.weights == "published":
            return G.tw_group_weights(logits.detach(), ro.mask, self.cfg.group_size, self.cfg.tw_grpo.alpha)
        kl = G.group_mean_kl(logits.detach(), ro.mask, self.cfg.group_size)
        return G.tw_token_weights(kl, ro.mask, self.cfg.tw_grpo.alpha)


class RegGRPOMethod(GRPOMethod):
    """DeepVideo-R1 Reg-GRPO: advantage regression and difficulty-aware re-rolls."""

    name = "reg_grpo"
    regression = True

    def shard_trained_refusal(self) -> str | None:
        return ("reg_grpo re-rolls only the groups its own process found saturated, so the processes would run the "
                "policy unequally often (grpo.reg_grpo.augment=false lifts it)") if self.cfg.reg_grpo.augment else None

    def adjust(self, ro: Rollouts) -> Rollouts:
        if not self.cfg.reg_grpo.augment:
            return ro
        sat = G.saturated_groups(ro.accuracy, self.cfg.group_size)
        idx = torch.nonzero(sat).flatten().tolist()
        if not idx:
            return ro
        videos = ro.videos[idx].clone()
        items = [ro.items[i] for i in idx]
        easy = (sat[idx] > 0).tolist()
        noise = torch.randn(videos.shape, generator=self.data.generator).to(videos.device) * self.cfg.reg_grpo.noise_std
        videos = torch.where(torch.tensor(easy, device=videos.device)[:, None, None, None, None], (videos + noise).clamp(0, 1), videos)
        items = [it if e else with_hint(it) for it, e in zip(items, easy)]
        return splice(ro, idx, self.rollout(videos, items))


class CurriculumGRPOMethod(GRPOMethod):
    """VideoTG-R1: hard questions (by their own group's rewards) rolled again with frames outside the answer's
    span masked, the masked share decaying over training."""

    name = "tg_grpo"

    def shard_trained_refusal(self) -> str | None:
        return "tg_grpo re-rolls only the questions its own process found hard, so the processes would run the policy unequally often"

    def mask_ratio(self, step: int) -> float:
        c = self.cfg.curriculum
        return c.mask_ratio * max(0.0, 1.0 - step / c.decay_steps)

    def adjust(self, ro: Rollouts) -> Rollouts:
        c, ratio = self.cfg.curriculum, self.mask_ratio(self._step)
        difficulty = 1.0 - ro.accuracy.view(len(ro.items), -1).mean(1)
        idx = [p for p, d in enumerate(difficulty.tolist()) if d > 1.0 - c.hard_below and ro.items[p].span is not None]
        self._stats = {"mask_ratio": ratio, "hard_questions": len(idx) / len(ro.items)}
        if not idx or not ratio:
            return ro
        videos = torch.stack([mask_outside(ro.videos[p], ro.items[p].span, ratio, self.data.generator) for p in idx])
        return splice(ro, idx, self.rollout(videos, [ro.items[p] for p in idx]))


class PairBuffer:
    """The preference pairs of a VerIPO cycle (checkpointed, so a run resumes with them)."""

    def __init__(self):
        self.pairs: list[dict[str, torch.Tensor]] = []

    def __len__(self):
        return len(self.pairs)

    def state_dict(self):
        return {"pairs": self.pairs}

    def load_state_dict(self, state):
        self.pairs = list(state["pairs"])


def preference_pair(accuracy: list[float], verified: list[float]) -> tuple[int, int] | None:
    """(chosen, rejected) rows of one group: chosen the first right answer on verified reasoning; rejected the first
    right answer on unverified reasoning, else the first wrong answer; None when either is missing."""
    chosen = [i for i, (a, v) in enumerate(zip(accuracy, verified)) if a >= 1 and v >= 1]
    rejected = [i for i, (a, v) in enumerate(zip(accuracy, verified)) if a >= 1 and v < 1]
    rejected = rejected or [i for i, a in enumerate(accuracy) if a < 1]
    return (chosen[0], rejected[0]) if chosen and rejected else None


class VerIPOMethod(GRPOMethod):
    """VerIPO: GRPO phases whose rollouts the verifier turns into preference pairs, then DPO phases on them."""

    name = "veripo"

    def shard_trained_refusal(self) -> str | None:
        return "veripo's DPO steps run where its own process kept preference pairs, so the processes would run the policy unequally often"

    def __init__(self, cfg: GRPOMethodConfig, optim: OptimConfig, seed: int, policy: Policy | None = None):
        super().__init__(cfg, optim, seed, policy)
        if cfg.train_vision:
            raise ValueError("grpo.variant=veripo keeps each pair's video embedding, so it needs the vision tower "
                             "frozen (grpo.train_vision=false)")
        if self.ref is None:  # DPO needs a reference even where GRPO's KL is off
            self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.buffer = PairBuffer()

    def _position(self, step: int) -> int:
        """Where ``step`` (from 1) falls in its cycle, from 0."""
        c = self.cfg.veripo
        return (step - 1) % (c.grpo_steps + c.dpo_steps)

    def phase(self, step: int) -> str:
        return "grpo" if self._position(step) < self.cfg.veripo.grpo_steps else "dpo"

    def adjust(self, ro: Rollouts) -> Rollouts:
        from .qa import verify

        Gs, texts = ro.ids.shape[0] // len(ro.items), ro.texts
        emb = ro.video_emb if ro.video_emb is not None else self._encode(self.policy, ro.videos)
        for p, item in enumerate(ro.items):
            rows = range(p * Gs, (p + 1) * Gs)
            pair = preference_pair([float(ro.accuracy[i]) for i in rows], [verify(texts[i], item) for i in rows])
            if pair is None:
                continue
            c, r = (p * Gs + k for k in pair)
            keep = ro.prompt_mask[c].bool()
            self.buffer.pairs.append({"video_emb": emb[p].cpu(), "prompt": ro.prompt_ids[c][keep].cpu(),
                                      "chosen": ro.ids[c][ro.mask[c].bool()].cpu(),
                                      "rejected": ro.ids[r][ro.mask[r].bool()].cpu()})
        return ro

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        if self.phase(step) == "dpo" and len(self.buffer):
            return self.dpo_step(ctx)
        if self._position(step) == 0:
            self.buffer.pairs = []  # a new cycle collects its own pairs
        return {**super().train_step(step, ctx), "dpo_pairs": float(len(self.buffer))}

    def dpo_step(self, ctx: StepContext) -> dict[str, float]:
        from ..models.vlm import pad_batch

        c, dev = self.cfg.veripo, next(self.policy.parameters()).device
        pick = torch.randint(len(self.buffer), (c.dpo_batch,), generator=self.data.generator).tolist()
        pairs = [self.buffer.pairs[i] for i in pick]
        pad = self.policy.tokenizer.pad_id
        p_ids, p_mask = pad_batch([p["prompt"].tolist() for p in pairs] * 2, pad, left_pad=True)
        ids, mask = pad_batch([p["chosen"].tolist() for p in pairs] + [p["rejected"].tolist() for p in pairs], pad,
                              left_pad=False)
        p_ids, p_mask, ids, mask = (t.to(dev) for t in (p_ids, p_mask, ids, mask))
        emb = torch.stack([p["video_emb"] for p in pairs]).to(dev).repeat(2, 1, 1)  # the frozen tower's, as rolled out
        n = len(pairs)
        # train.grad_accum splits the pairs into passes (each pair's chosen and rejected rows together) whose
        # losses sum to the batch's: the DPO mean and the NLL token mean divide by the whole batch's counts
        parts = [torch.cat((i, i + n)).to(dev) for i in torch.arange(n).tensor_split(min(ctx.cfg.grad_accum, n))]
        rows = lambda r: (emb[r], p_ids[r], p_mask[r], ids[r], mask[r])  # noqa: E731
        with torch.no_grad():
            ref = [(self.ref.token_logprobs(*rows(r)) * mask[r]).sum(1) for r in parts]
        chosen_tokens, margins = mask[:n].sum(), []

        def micro(i: int) -> torch.Tensor:
            r, k = parts[i], len(parts[i]) // 2
            tokens = self.policy.token_logprobs(*rows(r)) * mask[r]
            logp = tokens.sum(1)
            loss, margin = G.dpo_loss(logp[:k], logp[k:], ref[i][:k], ref[i][k:], c.dpo_beta)
            margins.append(margin.detach())
            loss = loss * k / n
            if c.nll_weight:
                loss = loss - c.nll_weight * tokens[:k].sum() / chosen_tokens
            return loss

        out = ctx.optimize(self.opt, [p for p in self.policy.parameters() if p.requires_grad], micro, self.sched,
                           parts=len(parts))
        margin = torch.cat(margins)
        return {**out, "dpo_margin": float(margin.mean()), "dpo_accuracy": float((margin > 0).float().mean()),
                "dpo_pairs": float(len(self.buffer))}

    def stateful(self):
        return {**super().stateful(), "pairs": self.buffer}


class ThinkerGRPOMethod(GRPOMethod):
    """Video-Thinker: rewards for grounded, captioned clues in the think block, beside accuracy and format."""

    name = "thinker"

    def __init__(self, cfg: GRPOMethodConfig, optim: OptimConfig, seed: int, policy: Policy | None = None):
        if not cfg.qa.thinker:
            raise ValueError("grpo.variant=thinker rewards grounded clues: set grpo.qa.thinker=true (and start from an "
                             "SFT run on those traces)")
        super().__init__(cfg, optim, seed, policy)

    def adjust(self, ro: Rollouts) -> Rollouts:
        from ..worlds.qa import clue_text

        Gs = ro.ids.shape[0] // len(ro.items)
        truth = [clue_text(it.clues) for it in ro.items for _ in range(Gs)]
        clues = torch.tensor([TASK_REWARDS.get("clues")(text, t) for text, t in zip(ro.texts, truth)])
        ro.rewards = ro.rewards + self.cfg.thinker.clue_weight * clues
        self._stats = {"reward_clues": float(clues.mean())}
        return ro


def check_passes(n: int, prompts: int) -> None:
    """``train.grad_accum`` splits a step's prompts: at most one pass a prompt."""
    from ..errors import UsageError

    if n > prompts:
        raise UsageError(f"train.grad_accum is {n}: it splits a step's {prompts} prompts (grpo.prompts_per_step), "
                         f"so at most {prompts}")


def micro_batches(ro: Rollouts, n: int) -> list[tuple[Rollouts, slice]]:
    """``ro``'s prompts in ``n`` consecutive parts (sizes differing by at most one), each with all its rows,
    and the rows each part holds. Group-level quantities (advantages, TW-GRPO's token weights) stay whole."""
    P = len(ro.items)
    check_passes(n, P)
    Gs = ro.ids.shape[0] // P
    out, start = [], 0
    for k in range(n):
        stop = start + P // n + (k < P % n)
        rows = slice(start * Gs, stop * Gs)
        part = replace(ro, videos=ro.videos[start:stop], items=ro.items[start:stop],
                       video_emb=None if ro.video_emb is None else ro.video_emb[start:stop],
                       texts=None if ro.texts is None else ro.texts[rows])
        for name in ("prompt_ids", "prompt_mask", "ids", "mask", "accuracy", "fmt", "rewards"):
            setattr(part, name, getattr(ro, name)[rows])
        out.append((part, rows))
        start = stop
    return out


def splice(ro: Rollouts, idx: list[int], new: Rollouts) -> Rollouts:
    """``ro`` with prompts ``idx`` (and their rows) replaced by ``new``'s prompts, in order."""
    Gs = ro.ids.shape[0] // len(ro.items)
    rows = torch.tensor([p * Gs + g for p in idx for g in range(Gs)])
    videos, items = ro.videos.clone(), list(ro.items)
    videos[idx] = new.videos
    for j, p in enumerate(idx):
        items[p] = new.items[j]
    emb = None
    if ro.video_emb is not None:
        emb = ro.video_emb.clone()
        emb[idx] = new.video_emb
    out = replace(ro, videos=videos, items=items, video_emb=emb)
    for name in ("prompt_ids", "prompt_mask", "ids", "mask"):
        a, b = getattr(ro, name), getattr(new, name)
        width = max(a.shape[1], b.shape[1])
        left = name.startswith("prompt")
        a, b = _pad_to(a, width, left), _pad_to(b, width, left)
        a = a.clone()
        a[rows] = b
        setattr(out, name, a)
    for name in ("accuracy", "fmt", "rewards"):
        a = getattr(ro, name).clone()
        a[rows] = getattr(new, name)
        setattr(out, name, a)
    if ro.texts is not None and new.texts is not None:
        out.texts = list(ro.texts)
        for i, r in enumerate(rows.tolist()):
            out.texts[r] = new.texts[i]
    return out


def _pad_to(t: torch.Tensor, width: int, left: bool) -> torch.Tensor:
    """Pad (N, L) ids/masks with zeros (<pad> / False) to ``width`` columns, on the left for prompts."""
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    z = torch.zeros(t.shape[0], extra, dtype=t.dtype, device=t.device)
    return torch.cat((z, t) if left else (t, z), 1)


METHODS = {"grpo": GRPOMethod, "t_grpo": TGRPOMethod, "tw_grpo": TWGRPOMethod, "reg_grpo": RegGRPOMethod,
           "tg_grpo": CurriculumGRPOMethod, "veripo": VerIPOMethod,
           "thinker": ThinkerGRPOMethod}
VARIANTS = tuple(METHODS)


def build_grpo(cfg: GRPOMethodConfig, optim: OptimConfig, seed: int, policy: Policy | None = None) -> GRPOMethod:
    if cfg.variant not in METHODS:
        raise ValueError(f"config key 'variant' is {cfg.variant!r}; valid: {', '.join(VARIANTS)}")
    return METHODS[cfg.variant](cfg, optim, seed, policy)
