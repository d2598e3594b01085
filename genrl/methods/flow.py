"""Flow-matching pretraining of the text-to-video teacher on autoencoder latents.

Standard rectified-flow objective (v = eps - x0) with logit-normal, shifted
noise levels, caption dropout for classifier-free guidance, and an EMA of the
whole model that is what gets exported and sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import schedulers as fm
from ..errors import UsageError
from ..models.registry import load_model, save_weights
from ..models.video_model import VideoModel, VideoModelConfig
from ..train.ema import EMA
from ..train.trainer import Method, Role, StepContext
from ..worlds.shapes import ShapesWorld
from .common import GeneratorState, OptimConfig, adamw, sample_and_write


@dataclass
class FlowMethodConfig:
    """Teacher pretraining settings."""

    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    autoencoder: str = "shapes-autoencoder"
    """Name or path of the trained autoencoder whose latents the model learns."""
    init: str = ""
    """Start from these video-model weights (name or path, e.g. to fine-tune with another noise
    schedule); its architecture must match ``model``. Empty = random initialisation."""
    batch_size: int = 32
    """Clips per micro-batch."""
    train_shift: float | None = None
    """Time shift of the training noise levels; None = the model's own (sampling) shift. Lower values train
    more at low noise, where small details such as a shape's corners are settled."""
    caption_dropout: float = 0.1
    """Probability of replacing a caption by the empty prompt (enables CFG)."""
    ema_decay: float = 0.999
    """EMA decay of the exported weights."""
    sample_steps: int = 30
    """Sampling steps for the periodic sample grids."""
    sample_guidance: float = 4.0
    """CFG scale for the periodic sample grids."""
    num_samples: int = 8
    """Clips in each sample grid."""


class FlowMethod(Method):
    name = "pretrain"

    def __init__(self, cfg: FlowMethodConfig, optim: OptimConfig, world: ShapesWorld, seed: int):
        self.cfg, self.world = cfg, world
        self.model = VideoModel(cfg.model)
        self.model.autoencoder.load_state_dict(load_model(cfg.autoencoder, kind="autoencoder").state_dict())
        if cfg.init:
            start = load_model(cfg.init, kind="video_model")
            try:
                self.model.dit.load_state_dict(start.dit.state_dict())
                self.model.text_encoder.load_state_dict(start.text_encoder.state_dict())
            except RuntimeError as e:
                raise UsageError(f"flow.init={cfg.init}: its architecture differs from flow.model "
                                 f"({str(e).splitlines()[1].strip()[:160]})") from None
        self.params = [*self.model.dit.parameters(), *self.model.text_encoder.parameters()]
        self.opt, self.sched = adamw(self.params, optim)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.data = GeneratorState(seed)
        self.frames = world.cfg.frames

    def flow_loss(self, model: VideoModel, video: torch.Tensor, captions: list[str], g: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            x0 = model.encode(video)
        B = x0.shape[0]
        drop = torch.rand(B, generator=g) < self.cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        shift = model.cfg.shift if self.cfg.train_shift is None else self.cfg.train_shift
        sigma = fm.sample_training_sigma(B, shift, g)
        eps = torch.randn(x0.shape, generator=g)
        xt = fm.add_noise(x0, eps, sigma)
        v = model.velocity(xt, sigma, model.encode_text(captions))
        return F.mse_loss(v, fm.velocity_target(x0, eps))

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        g = self.data.generator

        def micro(_: int) -> torch.Tensor:
            video, captions, _ = self.world.random_clips("train", self.cfg.batch_size, g)
            return self.flow_loss(self.model, video, captions, g)

        out = ctx.optimize(self.opt, self.params, micro, self.sched)
        self.ema.update(self.model)
        return out

    def roles(self):
        return {"model": Role(self.model, trainable=True), "ema": Role(self.ema.module, cast=False)}

    def sequence_parallel_models(self):
        return [self.model.dit]

    def checkpoint_modules(self):
        return {"model": self.model, "ema": self.ema.module}

    def stateful(self):
        return {"optimizer": self.opt, "scheduler": self.sched, "data": self.data}

    def write_samples(self, step: int, folder: Path) -> dict[str, float]:
        path = folder / f"step_{step:07d}.gif"
        return sample_and_write(self.ema.module, self.world, self.cfg.num_samples, path, self.cfg.sample_steps, self.cfg.sample_guidance)

    def export(self, run_dir: Path) -> Path:
        return save_weights(self.ema.module, run_dir / "model.safetensors", "video_model", self.cfg.model)
