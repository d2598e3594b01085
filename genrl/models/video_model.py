"""The text-to-video model bundle: text encoder + DiT + autoencoder, exposing primitives.

Methods (pretraining, DMD, Stream-R1) only call these primitives —
``encode_text``, ``add_noise``, ``velocity``, ``predict_x0``, ``sample``,
``decode`` — and never reach into the scheduler or the autoencoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import schedulers as fm
from ..config import check
from .autoencoder import Autoencoder, AutoencoderConfig
from .dit import DiTConfig, KVCache, VideoDiT
from .text import TextEncoder, TextEncoderConfig, WordTokenizer


@dataclass
class StreamingConfig:
    """How a block-causal student generates: chunk by chunk against a KV cache."""

    enabled: bool = False
    """True for streaming students; False for bidirectional teachers."""
    timesteps: list[float] = check(factory=lambda: [1000.0, 750.0, 500.0, 250.0], rule="nonempty and each (0, 1000]")
    """Denoising timesteps per chunk (shifted by the model's shift)."""
    local_frames: int = check(9, ">=1")
    """Frames a chunk attends to (cache + itself); the training length keeps positions in range."""
    sink_frames: int = check(3, ">=0")
    """First frames kept in the cache forever once the window rolls."""
    context_noise: float = check(0.0, "[0, 1000]")
    """Timestep at which clean chunks are re-encoded into the cache."""


@dataclass
class VideoModelConfig:
    """A text-to-video flow-matching model on autoencoder latents."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    shift: float = 3.0
    """Time shift k used for training noise levels and sampling steps."""
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    height: int = 32
    """Pixel height of generated frames."""
    width: int = 32
    """Pixel width of generated frames."""


class FlowVideoModel(nn.Module):
    """Flow-matching primitives shared by every text-to-video model genrl drives.

    A subclass provides ``cfg`` (with ``shift``, ``streaming`` and ``dit.chunk_frames``), a ``dit``
    taking ``(x, t, text, text_mask, causal=, cache=)`` over (B, F, C, h, w) latents, and
    ``encode_text``, ``latent_shape``, ``latent_hw``, ``encode`` and ``decode``.
    """

    chunk_decodable = True
    """Whether ``decode`` can turn each streamed chunk into pixels on its own."""
    fps = 6
    """Frames a second its videos are written at (the shapes world's clips are shown at 6)."""
    default_guidance = 4.0
    """CFG scale it samples at when none is asked for (the shapes teacher's, in its README figures)."""

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def latent_frames(self, frames: int) -> int:
        """Latent frames that decode to ``frames`` pixel frames."""
        return frames

    def prepare_prompts(self, prompts: list[str], seed: int = 0) -> list[str]:
        """Prompts as the model reads them (identity; the shapes models complete partial prompts)."""
        return prompts

    def pixel_frames(self, latent_frames: int) -> int:
        return latent_frames

    @staticmethod
    def add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
        return fm.add_noise(x0, eps, sigma)

    def velocity(self, xt, sigma, text, null_text=None, guidance: float = 1.0, causal=False, cache: KVCache | None = None):
        """Flow velocity at noise level ``sigma`` ((B,) or (B, F)); CFG when guidance != 1."""
        t = torch.as_tensor(sigma, device=xt.device).float() * fm.NUM_TRAIN_TIMESTEPS
        t = t.expand(xt.shape[0]) if t.ndim == 0 else t
        v_c = self.dit(xt, t, *text, causal=causal, cache=cache)
        if guidance == 1.0 or null_text is None:
            return v_c
        v_u = self.dit(xt, t, *null_text, causal=causal, cache=cache)
        return fm.cfg(v_u, v_c, guidance)

    def predict_x0(self, xt, sigma, text, null_text=None, guidance: float = 1.0, causal=False, cache=None):
        v = self.velocity(xt, sigma, text, null_text, guidance, causal, cache)
        return fm.x0_from_velocity(xt, v, sigma)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        frames: int,
        steps: int = 50,
        guidance: float = 5.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional Euler sampling over ``steps`` shifted steps with CFG; returns latents."""
        text = self.encode_text(prompts)
        null = self.encode_text([""] * len(prompts)) if guidance != 1.0 else None
        x = noise if noise is not None else torch.randn(self.latent_shape(len(prompts), frames), generator=generator)
        x = x.to(self.device)
        sigmas = fm.sampling_sigmas(steps, self.cfg.shift).tolist()
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            v = self.velocity(x, torch.full((x.shape[0],), s, device=x.device), text, null, guidance)
            x = fm.euler_step(x, v, s, s_next)
        return x

    # ------------------------------------------------------------------ streaming
    def new_cache(self) -> KVCache:
        st = self.cfg.streaming
        return self.dit.new_cache(self.latent_hw, st.local_frames, st.sink_frames)

    def streaming_sigmas(self, timesteps: list[float] | None = None) -> list[float]:
        """Shifted noise levels of the few-step schedule (the model's own, or ``timesteps``), ending at 0."""
        steps = self.cfg.streaming.timesteps if timesteps is None else timesteps
        return fm.sigmas_from_timesteps(list(steps), self.cfg.shift).tolist()

    def predict_x0_streaming(self, xt: torch.Tensor, sigma: float, text, cache: KVCache) -> torch.Tensor:
        """x0-prediction for one chunk against the cache (reads it, does not write it)."""
        sig = torch.full((xt.shape[0],), float(sigma), device=xt.device)
        return self.predict_x0(xt, sig, text, cache=cache)

    def write_cache(self, x0_chunk: torch.Tensor, text, cache: KVCache, generator: torch.Generator | None = None) -> None:
        """Re-encode a finished chunk into the cache (no gradient), noised to the context level.

        With ``streaming.context_noise`` = 0 (the default) the clean chunk is encoded at t = 0 and no
        noise is drawn; above 0 the chunk is noised to that level with fresh noise, so the label
        the network reads matches its input.
        """
        sigma = self.cfg.streaming.context_noise / fm.NUM_TRAIN_TIMESTEPS
        with torch.no_grad():
            x = x0_chunk.detach()
            if sigma > 0:
                eps = torch.randn(x.shape, generator=generator).to(x.device)
                x = fm.add_noise(x, eps, sigma)
            cache.writing = True
            try:
                self.velocity(x, torch.full((x.shape[0],), sigma, device=x.device), text, cache=cache)
            finally:
                cache.writing = False

    @torch.no_grad()
    def stream(self, prompts: list[str], frames: int, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, timesteps: list[float] | None = None,
               first_timesteps: list[float] | None = None):
        """Generate chunk by chunk; yields each finished chunk's latents (B, chunk, C, h, w).

        Each chunk runs the few-step schedule (predict x0, re-noise to the next level with
        fresh noise), then is written into the rolling KV cache for the chunks after it (the
        last chunk is not: nothing reads it). ``timesteps`` replaces the trained schedule;
        ``first_timesteps`` replaces it for the first chunk alone.
        """
        text = self.encode_text(prompts)
        cache = self.new_cache()
        rest = self.streaming_sigmas(timesteps)
        first = rest if first_timesteps is None else self.streaming_sigmas(first_timesteps)
        chunk = self.cfg.dit.chunk_frames
        noise = noise if noise is not None else torch.randn(self.latent_shape(len(prompts), frames), generator=generator)
        noise = noise.to(self.device)
        for start in range(0, frames, chunk):
            x, sigmas = noise[:, start : start + chunk], first if start == 0 else rest
            for i, s in enumerate(sigmas[:-1]):
                x0 = self.predict_x0_streaming(x, s, text, cache)
                if i + 1 < len(sigmas) - 1:
                    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
                    x = fm.add_noise(x0, eps, sigmas[i + 1])
            if start + chunk < frames:  # the last chunk's cache refresh would serve no later chunk
                self.write_cache(x0, text, cache, generator)
            yield x0


class VideoModel(FlowVideoModel):
    def __init__(self, cfg: VideoModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(max_len=cfg.text.max_len)
        self.text_encoder = TextEncoder(cfg.text, len(self.tokenizer.vocab))
        self.dit = VideoDiT(cfg.dit)
        self.autoencoder = Autoencoder(cfg.autoencoder)
        self.autoencoder.requires_grad_(False)

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = self.autoencoder.factor
        return self.cfg.height // f, self.cfg.width // f

    def latent_shape(self, batch: int, frames: int) -> tuple[int, ...]:
        return (batch, frames, self.cfg.dit.in_channels, *self.latent_hw)

    # ----------------------------------------------------------------- primitives
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.text_encoder(ids, mask), mask

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents)

    def prepare_prompts(self, prompts: list[str], seed: int = 0) -> list[str]:
        """The world's full caption for any prompt: named attributes kept (any order, paraphrases),
        open ones drawn from the world with ``seed`` (see :mod:`genrl.worlds.prompting`)."""
        from ..worlds.prompting import extend_prompts

        return extend_prompts(prompts, seed)[0]

    def streaming_copy(self, streaming: StreamingConfig) -> "VideoModel":
        """The same weights as a block-causal student that generates chunk by chunk."""
        out = VideoModel(dataclasses.replace(self.cfg, streaming=dataclasses.replace(streaming, enabled=True)))
        out.load_state_dict(self.state_dict())
        return out.to(self.device)

    def save(self, run_dir) -> Path:
        """Write ``model.safetensors`` (weights + config) into ``run_dir``."""
        from .registry import save_weights

        return save_weights(self, Path(run_dir) / "model.safetensors", "video_model", self.cfg)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
