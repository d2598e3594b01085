"""Supervised warm-start of a video-language model on shapes QA (`genrl sft`).

Cross-entropy on the completion ``<think> description </think> <answer> x
</answer> <eos>`` given the video and the question; the vision tower trains
with the language model. Real VLMs start from a pretrained vision encoder; the
tiny one starts from scratch, so ``vision_aux_weight`` adds what such a
pretraining would have taught: linear heads on the pooled video embeddings
classify each single-shape clip's attributes (the heads are dropped at export).
Periodic held-out accuracy goes to metrics.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..models.vlm import TinyVLM
from ..train.trainer import Method, StepContext
from ..worlds.qa import CHOICE_TYPES, QAConfig, ShapesQA
from ..worlds.shapes import VALUES
from .common import GeneratorState, OptimConfig, adamw
from .qa import accuracy_metrics, build_vlm, evaluate_qa, fit_vocabulary, load_policy, prompts, save_policy, targets
from .vst import StreamConfig, draw_asks, evaluate_stream, stream_loss, vocabulary_words


DESCRIBED = ("size", "colour", "shape", "direction", "speed")  # the order of an item's description


@dataclass
class SFTMethodConfig:
    """Supervised fine-tuning on shapes QA."""

    size: str = "shapes"
    """Model size to build when ``init`` is empty ('debug' or 'shapes')."""
    init: str = ""
    """Start from this policy instead of a fresh model: genrl VLM weights (name or path) or a local
    transformers Qwen2-VL / Qwen2.5-VL folder."""
    qa: QAConfig = field(default_factory=QAConfig)
    batch_size: int = 32
    """Questions per micro-batch."""
    eval_num: int = 256
    """Held-out (val) questions scored at each sample step."""
    vision_aux_weight: float = 1.0
    """Weight of the attribute classification loss on pooled video embeddings (0 = none)."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """VST: train on streams — the vision tower made causal in time, a thought after each chunk, the question
    after a random chunk (``genrl/methods/vst.py``)."""


class SFTMethod(Method):
    name = "sft"

    def __init__(self, cfg: SFTMethodConfig, optim: OptimConfig, seed: int):
        self.cfg = cfg
        self.qa = ShapesQA(cfg.qa)
        self.model = fit_vocabulary(load_policy(cfg.init, cfg.qa), cfg.qa).train() if cfg.init else build_vlm(cfg.size, self.qa)
        if cfg.stream.enabled:
            if not isinstance(self.model, TinyVLM):
                raise UsageError("sft.stream needs a genrl VLM (its vision tower is made causal in time)")
            tp, frames = self.model.cfg.temporal_patch, cfg.qa.frames
            if frames % cfg.stream.chunk_frames or cfg.stream.chunk_frames % tp:
                raise UsageError(f"sft.stream.chunk_frames={cfg.stream.chunk_frames}: must divide qa.frames={frames} "
                                 f"and be a multiple of the vision tower's temporal patch ({tp} frames)")
            self.model.cfg.causal_time = True
            self.model.add_words(vocabulary_words())
        self.aux = nn.Linear(2 * self.model.video_dim, sum(len(VALUES[a]) for a in DESCRIBED))
        self.opt, self.sched = adamw([*self.model.parameters(), *self.aux.parameters()], optim)
        self.data = GeneratorState(seed)

    def loss(self, videos: torch.Tensor, items) -> torch.Tensor:
        dev = videos.device
        emb = self.model.encode_video(videos)
        st = self.cfg.stream
        if st.enabled:
            asks = draw_asks(items, self.qa.cfg.frames, st.chunk_frames, self.data.generator)
            loss = stream_loss(self.model, emb, items, asks, st.chunk_frames, st.thoughts)
        else:
            p_ids, p_mask = prompts(self.model, items, dev)
            t_ids, t_mask = targets(self.model, items, dev)
            logits = self.model.logits(emb, p_ids, p_mask, t_ids, t_mask)
            loss = F.cross_entropy(logits[t_mask].float(), t_ids[t_mask])
        if self.cfg.vision_aux_weight:
            loss = loss + self.cfg.vision_aux_weight * self.attribute_loss(emb, items)
        return loss

    def attribute_loss(self, emb: torch.Tensor, items) -> torch.Tensor:
        """Cross-entropy of each described attribute of the single-shape clips from pooled embeddings."""
        rows = [i for i, it in enumerate(items) if it.qtype in CHOICE_TYPES]
        if not rows:
            return emb.sum() * 0
        feats = torch.cat((emb[rows].mean(1), emb[rows].amax(1)), -1)
        logits = self.aux(feats).split([len(VALUES[a]) for a in DESCRIBED], -1)
        words = [items[i].clues[0][2].split() for i in rows]  # the (first) shape's description, in any trace style
        losses = [F.cross_entropy(lg, torch.tensor([VALUES[a].index(w[k]) for w in words], device=emb.device))
                  for k, (a, lg) in enumerate(zip(DESCRIBED, logits))]
        return sum(losses) / len(losses)

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        dev = ctx.accelerator.device

        def micro(_: int) -> torch.Tensor:
            videos, items = self.qa.random_items("train", self.cfg.batch_size, self.data.generator)
            return self.loss(videos.to(dev), items)

        # the attribute heads are trained too: every process must step them with the same (averaged) gradients;
        # they stay outside the clipped norm, as the shipped SFT runs had them
        return ctx.optimize(self.opt, self.model.parameters(), micro, self.sched, unclipped=self.aux.parameters())

    def sequence_parallel_models(self):
        return [self.model]

    def checkpoint_modules(self):
        return {"policy": self.model, "attribute_heads": self.aux}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        if not self.cfg.eval_num:
            return {}
        if self.cfg.stream.enabled:
            r = evaluate_stream(self.model, "val", self.cfg.eval_num, qa=self.qa, chunk_frames=self.cfg.stream.chunk_frames,
                                latency_num=0)
            return {"val_accuracy": r["accuracy"], **{f"val_frames_{f}": v for f, v in r["accuracy_by_frames"].items()}}
        return accuracy_metrics(evaluate_qa(self.model, "val", self.cfg.eval_num, qa=self.qa), "val")

    def shard_trained_refusal(self) -> str | None:
        if self.cfg.stream.enabled:
            return "sft.stream's evaluation answers each question at its own chunk, so the processes would run the policy unequally often"
        return None

    def export(self, run_dir: Path, weights: dict[str, dict] | None = None) -> Path:
        return save_policy(self.model, run_dir, None if weights is None else weights["policy"])
