"""Wan2.1 in diffusers format as a genrl text-to-video model: teacher, critic or streaming student.

genrl drives diffusers' own classes — ``WanTransformer3DModel``, ``AutoencoderKLWan``
and the folder's scheduler — and transformers' UMT5 encoder. What streaming
needs is added from outside the architecture:

- :class:`CausalWanProcessor`, installed on every block's self-attention, applies a
  block-causal mask over chunks of latent frames, or attends from one chunk to a
  :class:`~genrl.models.dit.KVCache` of earlier clean chunks (writing to it when asked);
- with a cache, RoPE follows genrl's layout: cached keys are stored un-rotated and get
  contiguous frame positions 0..n-1 at use, the chunk comes right after them, so a
  rolling window with sink frames never leaves the positions seen in training;
- :meth:`WanDiT.run` takes that layout as given: sequence parallelism (``genrl.parallel``) runs the
  transformer on one rank's frames, with RoPE at the whole video's positions and an all-to-all attention.

Cross-attention keeps diffusers' processor and recomputes the text keys/values at every
call, so no cached tensor can cut a gradient. The UMT5 encoder, the tokenizer, the VAE
and the scheduler are frozen and held in :class:`SharedParts`, which ``copy.deepcopy``
does not copy: the teacher, the critic, the student and its EMA hold one copy of them,
and checkpoints hold only the transformer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..attention import BlockCausal, attention
from ..errors import UsageError
from .dit import KVCache, cached_attention
from .video_model import FlowVideoModel, StreamingConfig

EXPORT_FILE = "genrl_wan.json"
TEMPORAL, SPATIAL = 4, 8  # AutoencoderKLWan's compression (checked against the VAE's config on load)


@dataclass
class WanDiTConfig:
    """Block-causal layout of the Wan transformer."""

    chunk_frames: int = 3
    """Latent frames per chunk in block-causal mode (Self-Forcing: 3)."""


@dataclass
class WanConfig:
    """A Wan2.1 text-to-video model from a local diffusers folder."""

    pipeline: str = ""
    """Diffusers Wan2.1 pipeline folder (model_index.json): text encoder, tokenizer, VAE, scheduler, transformer."""
    transformer: str = ""
    """Folder whose transformer/ (or itself, with a config.json) replaces the pipeline's; empty = the pipeline's."""
    shift: float = 5.0
    """Time shift of the training and few-step noise levels (Self-Forcing: 5)."""
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    dit: WanDiTConfig = field(default_factory=WanDiTConfig)
    height: int = 480
    """Pixel height of generated frames (a multiple of 16)."""
    width: int = 832
    """Pixel width of generated frames (a multiple of 16)."""
    max_text_len: int = 512
    """UMT5 tokens per prompt (Wan: 512; shorter prompts are zero-padded)."""


# ------------------------------------------------------------------ attention
class _Rope(tuple):
    """(cos, sin) as diffusers hands them to each block, carrying this forward's attention layout.

    The layout travels with the rotary embedding rather than in shared state, so activation
    checkpointing, which re-runs a block during backward, sees exactly what the forward saw:
    the mask, and the cached keys/values as they were (tensors, never changed in place).
    """

    mask: BlockCausal | torch.Tensor | None = None
    cache: KVCache | None = None
    context: list | None = None  # per block (k, v) of the cache at call time
    ctx_rope: tuple[torch.Tensor, torch.Tensor] | None = None
    attend: object | None = None  # the attention call (sequence parallelism swaps in its all-to-all one)
    frames: tuple[int, int] | None = None  # (whole video's frames, this call's first frame): RoPE at global positions
    real: int | None = None  # tokens of a cached chunk that are not padding (sequence parallelism pads); None: all


class _LayoutRope(nn.Module):
    """Wraps the transformer's RoPE module; returns a :class:`_Rope` with the layout set by :class:`WanDiT`."""

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope
        self.layout: dict = {}

    def forward(self, hidden_states: torch.Tensor) -> _Rope:
        frames = self.layout.get("frames")
        if frames is None:
            out = _Rope(self.rope(hidden_states))
        else:  # this call holds frames [lo, lo + n) of a longer video: their slice of the whole video's angles
            (whole, lo), (n, H, W) = frames, hidden_states.shape[2:]
            _, ph, pw = self.rope.patch_size
            tpf = (H // ph) * (W // pw)
            angles = self.rope(hidden_states.new_empty((1, 0, whole, H, W)))
            out = _Rope(a[:, lo * tpf : (lo + n) * tpf] for a in angles)
        for k, v in self.layout.items():
            setattr(out, k, v)
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on (B, N, H, D) with interleaved pairs; cos/sin are (1, N, 1, D) as diffusers builds them."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


class CausalWanProcessor:
    """Self-attention of one Wan block: bidirectional, block-causal (a mask) or one chunk against a KV cache."""

    def __init__(self, block: int):
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        rope = rotary_emb
        if rope.cache is None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
            out = (rope.attend or attention)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), rope.mask)
        else:
            q, k_new, v_new = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, D), un-rotated
            if rope.attend is not None:  # sequence parallel: this rank's heads of the whole chunk
                q, k_new, v_new = (rope.attend.heads_of_all_tokens(a) for a in (q, k_new, v_new))
            cos, sin = rope.ctx_rope  # diffusers' (1, N, 1, D) tables -> genrl's (N, D/2) ones: the same pairs
            table = (cos[0, :, 0, 0::2], sin[0, :, 0, 1::2])
            n = q.shape[2]
            out = cached_attention(q, k_new, v_new, (table[0][-n:], table[1][-n:]), rope.cache, self.block, table,
                                   real=rope.real, context=rope.context[self.block])
            if rope.attend is not None:
                out = rope.attend.all_heads_of_my_tokens(out)
        out = out.transpose(1, 2).flatten(2, 3).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


class WanDiT(nn.Module):
    """diffusers' WanTransformer3DModel behind genrl's DiT call: (B, F, C, h, w) latents, t in [0, 1000]."""

    def __init__(self, transformer: nn.Module, cfg: WanDiTConfig):
        super().__init__()
        if getattr(transformer, "fused_projections", False):
            raise UsageError("fused QKV projections are not supported for streaming; load the transformer unfused")
        self.transformer, self.cfg = transformer, cfg
        if not isinstance(transformer.rope, _LayoutRope):
            transformer.rope = _LayoutRope(transformer.rope)
        for i, blk in enumerate(transformer.blocks):
            blk.attn1.set_processor(CausalWanProcessor(i))

    @property
    def depth(self) -> int:
        return len(self.transformer.blocks)

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def tokens_per_frame(self, h: int, w: int) -> int:
        _, ph, pw = self.patch
        return (h // ph) * (w // pw)

    def block_causal(self, tokens_per_frame: int, keys: torch.Tensor | None = None) -> BlockCausal:
        """Chunks of ``chunk_frames`` frames, each attending to itself and the chunks before it (no dense mask)."""
        return BlockCausal(self.cfg.chunk_frames * tokens_per_frame, keys)

    def new_cache(self, latent_hw: tuple[int, int], local_frames: int, sink_frames: int = 0) -> KVCache:
        return KVCache(self.depth, self.tokens_per_frame(*latent_hw), self.cfg.chunk_frames, local_frames, sink_frames)

    def enable_activation_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def forward(self, x, t, text, text_mask=None, causal: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        B, Fr, C, H, W = x.shape
        if cache is None:
            layout = {"cache": None, "mask": self.block_causal(self.tokens_per_frame(H, W)) if causal else None}
        else:
            layout = self.cache_layout(cache, Fr, x)
        return self.run(x, t, text, layout)

    def cache_layout(self, cache: KVCache, frames: int, x: torch.Tensor) -> dict:
        """The layout of a chunk of ``frames`` frames (the size of ``x``'s) against ``cache``: the cached context
        as it is now, and RoPE over the context's frames at 0..n-1 and the chunk's right after them."""
        H, W = x.shape[-2:]
        return {"cache": cache, "context": [cache.context(i) for i in range(self.depth)],
                "ctx_rope": self.transformer.rope.rope(x.new_empty((1, 0, cache.frames + frames, H, W)))}

    def run(self, x, t, text, layout: dict) -> torch.Tensor:
        """The transformer on latents (B, F, C, h, w) with the attention ``layout`` its blocks read (see :class:`_Rope`)."""
        dtype = self.transformer.dtype
        hs = x.permute(0, 2, 1, 3, 4).to(dtype)
        t = t.float()
        if t.ndim == 2:  # one timestep per frame -> per token (diffusers' per-token path)
            t = t.repeat_interleave(self.tokens_per_frame(*x.shape[-2:]), dim=1)
        rope = self.transformer.rope
        rope.layout = layout
        try:
            out = self.transformer(hs, t, text.to(dtype), return_dict=False)[0]
        finally:
            rope.layout = {}
        return out.permute(0, 2, 1, 3, 4).to(x.dtype)


# ---------------------------------------------------------------------- model
class SharedParts:
    """Frozen parts shared by every copy of a model (deepcopy returns the same object)."""

    def __init__(self, text_encoder, tokenizer, vae, scheduler):
        self.text_encoder, self.tokenizer, self.vae, self.scheduler = text_encoder, tokenizer, vae, scheduler
        for m in (text_encoder, vae):
            m.requires_grad_(False).eval()

    def __deepcopy__(self, memo):
        return self

    def apply(self, fn) -> None:
        self.text_encoder._apply(fn)
        self.vae._apply(fn)


class WanVideoModel(FlowVideoModel):
    """Wan2.1 with genrl's primitives (``encode_text``, ``velocity``, ``sample``, ``stream``, ``decode``).

    Latent frames: ``(frames - 1) // 4 + 1`` for ``frames`` pixel frames. ``sample`` runs the
    folder's own scheduler (as ``WanPipeline`` does); few-step streaming uses genrl's shifted levels.
    """

    chunk_decodable = False  # the causal VAE decodes a whole latent video at once
    fps = 16  # Wan2.1's frame rate: its 81 frames are 5 seconds (what VideoReward's frame rule reads them as)
    default_guidance = 5.0  # WanPipeline's default CFG scale

    def __init__(self, cfg: WanConfig, transformer: nn.Module, shared: SharedParts):
        super().__init__()
        self.cfg, self.shared = cfg, shared
        self.dit = WanDiT(transformer, cfg.dit)
        vae_cfg = shared.vae.config
        if vae_cfg.scale_factor_temporal != TEMPORAL or vae_cfg.scale_factor_spatial != SPATIAL:
            raise UsageError(f"{cfg.pipeline}: VAE compression {vae_cfg.scale_factor_temporal}x{vae_cfg.scale_factor_spatial}"
                             f" is not Wan2.1's {TEMPORAL}x{SPATIAL}")

    def _apply(self, fn, *args, **kwargs):
        self.shared.apply(fn)
        return super()._apply(fn, *args, **kwargs)

    # -------------------------------------------------------------- geometry
    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.cfg.height // SPATIAL, self.cfg.width // SPATIAL

    def latent_frames(self, frames: int) -> int:
        if frames < 1 or (frames - 1) % TEMPORAL:
            raise UsageError(f"Wan2.1 generates 4k+1 frames (1, 5, 9, ..., 81), got {frames}")
        return (frames - 1) // TEMPORAL + 1

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * TEMPORAL + 1

    def latent_shape(self, batch: int, frames: int) -> tuple[int, ...]:
        return (batch, frames, self.dit.transformer.config.in_channels, *self.latent_hw)

    # ------------------------------------------------------------ primitives
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """UMT5 features (B, max_text_len, d) zeroed past each prompt, as WanPipeline pads them, and the mask."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tok = self.shared.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                                    max_length=self.cfg.max_text_len, truncation=True, add_special_tokens=True,
                                    return_attention_mask=True, return_tensors="pt")
        enc = self.shared.text_encoder
        dev = next(enc.parameters()).device
        with torch.no_grad():
            h = enc(tok.input_ids.to(dev), tok.attention_mask.to(dev)).last_hidden_state
        mask = tok.attention_mask.to(dev).bool()
        return (h * mask[..., None]).to(self.device), mask.to(self.device)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.shared.vae.config
        shape = (1, 1, c.z_dim, 1, 1)
        return (torch.tensor(c.latents_mean).view(shape).to(like), torch.tensor(c.latents_std).view(shape).to(like))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) pixels in [0, 1] -> normalised latents (B, (F-1)/4+1, z, H/8, W/8)."""
        vae = self.shared.vae
        px = (video * 2 - 1).permute(0, 2, 1, 3, 4).to(vae.dtype)
        lat = vae.encode(px).latent_dist.mode().permute(0, 2, 1, 3, 4).float()
        mean, std = self._latent_stats(lat)
        return (lat - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels (B, F, 3, H, W) in [0, 1]; differentiable (the VAE stays frozen)."""
        vae = self.shared.vae
        mean, std = self._latent_stats(latents)
        lat = (latents * std + mean).permute(0, 2, 1, 3, 4).to(vae.dtype)
        video = vae.decode(lat, return_dict=False)[0].float()
        return ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def sample(self, prompts, frames, steps=50, guidance=5.0, generator=None, noise=None) -> torch.Tensor:
        """The folder's scheduler over ``steps`` steps with CFG uncond + w (cond - uncond), as WanPipeline."""
        text = self.encode_text(prompts)
        null = self.encode_text([""] * len(prompts)) if guidance > 1.0 else None
        x = noise if noise is not None else torch.randn(self.latent_shape(len(prompts), frames), generator=generator)
        x = x.to(self.device).float()
        sched = copy.deepcopy(self.shared.scheduler)
        sched.set_timesteps(steps, device=x.device)
        sched.set_begin_index(0)
        for t in sched.timesteps:
            tt = t.expand(x.shape[0])
            v = self.dit(x, tt, *text)
            if null is not None:
                v_u = self.dit(x, tt, *null)
                v = v_u + guidance * (v - v_u)
            # diffusers schedulers take (B, C, F, H, W)
            x = sched.step(v.permute(0, 2, 1, 3, 4), t, x.permute(0, 2, 1, 3, 4), return_dict=False)[0].permute(0, 2, 1, 3, 4)
        return x

    def streaming_copy(self, streaming: StreamingConfig) -> "WanVideoModel":
        """A copy (transformer copied, frozen parts shared) that generates chunk by chunk."""
        out = copy.deepcopy(self)
        out.cfg = dataclasses.replace(self.cfg, streaming=dataclasses.replace(streaming, enabled=True))
        return out

    def save(self, run_dir: str | Path) -> Path:
        """Write ``transformer/`` (diffusers format) and genrl_wan.json (the rest of the recipe) into ``run_dir``."""
        from .registry import check_finite

        run_dir = Path(run_dir)
        check_finite(self.dit.transformer.state_dict(), str(run_dir / "transformer"))
        self.dit.transformer.save_pretrained(str(run_dir / "transformer"))
        cfg = dataclasses.replace(self.cfg, transformer=str(run_dir.resolve()))
        tmp = run_dir / f".{EXPORT_FILE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        tmp.replace(run_dir / EXPORT_FILE)
        return run_dir / "transformer"


# -------------------------------------------------------------------- loading
def is_wan_folder(path: str | Path) -> bool:
    p = Path(path)
    if (p / EXPORT_FILE).is_file():
        return True
    index = p / "model_index.json"
    if index.is_file():
        return "Wan" in json.loads(index.read_text()).get("_class_name", "")
    return (p / "transformer" / "config.json").is_file()


def _transformer_dir(path: Path) -> Path:
    sub = path / "transformer"
    return sub if (sub / "config.json").is_file() else path


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """diffusers' WanTransformer3DModel from a folder; a missing or mismatched weight is a one-line error."""
    from diffusers import WanTransformer3DModel

    folder = _transformer_dir(Path(path))
    if not (folder / "config.json").is_file():
        raise UsageError(f"{path}: no transformer/config.json (not a diffusers Wan folder)")
    cls = json.loads((folder / "config.json").read_text()).get("_class_name")
    if cls != "WanTransformer3DModel":
        raise UsageError(f"{folder / 'config.json'}: holds a {cls!r}, expected 'WanTransformer3DModel'")
    try:
        model, info = WanTransformer3DModel.from_pretrained(str(folder), torch_dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        line = str(e).splitlines()[0].split(" If you want")[0].replace("Cannot load  because ", "weight ")
        raise UsageError(f"{folder}: {line[:240]}") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            raise UsageError(f"{folder}: {kind.replace('_', ' ')[:-1]} {info[kind][0]!r} ({len(info[kind])} in all)")
    return model.eval()


def load_shared(pipeline: str | Path, dtype: torch.dtype = torch.float32) -> SharedParts:
    from diffusers import AutoencoderKLWan
    from diffusers.schedulers import SchedulerMixin
    from transformers import AutoTokenizer, UMT5EncoderModel

    p = Path(pipeline)
    for sub in ("text_encoder", "tokenizer", "vae", "scheduler"):
        if not (p / sub).is_dir():
            raise UsageError(f"{p}: no {sub}/ folder (a diffusers Wan2.1 pipeline folder has text_encoder/, tokenizer/, vae/, scheduler/)")
    scheduler_cls = json.loads((p / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    import diffusers

    sched = getattr(diffusers, scheduler_cls)
    if not issubclass(sched, SchedulerMixin):
        raise UsageError(f"{p / 'scheduler'}: {scheduler_cls!r} is not a diffusers scheduler")
    return SharedParts(UMT5EncoderModel.from_pretrained(str(p / "text_encoder"), torch_dtype=dtype),
                       AutoTokenizer.from_pretrained(str(p / "tokenizer")),
                       AutoencoderKLWan.from_pretrained(str(p / "vae"), torch_dtype=dtype),
                       sched.from_pretrained(str(p / "scheduler")))


def _quiet_loading() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def load_wan(path: str | Path, overrides: dict | None = None, shared: SharedParts | None = None) -> WanVideoModel:
    """A pipeline folder, a folder with only transformer/ (needs ``pipeline`` in overrides) or a genrl Wan run folder."""
    _quiet_loading()
    p = Path(path)
    fields = {}
    if (p / EXPORT_FILE).is_file():
        fields = json.loads((p / EXPORT_FILE).read_text())
    elif (p / "model_index.json").is_file():
        fields = {"pipeline": str(p)}
    else:
        fields = {"transformer": str(p)}
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WanConfig), fields, overrides or {}))
    if not cfg.pipeline:
        raise UsageError(f"{p}: holds only a transformer; give the Wan2.1 pipeline folder for its text encoder and VAE")
    if cfg.height % 16 or cfg.width % 16:
        raise UsageError(f"height and width must be multiples of 16, got {cfg.height}x{cfg.width}")
    transformer = load_transformer(cfg.transformer or cfg.pipeline)
    longest = max(cfg.height, cfg.width) // (SPATIAL * transformer.config.patch_size[1])
    if longest > transformer.config.rope_max_seq_len:
        raise UsageError(f"{cfg.height}x{cfg.width} gives {longest} patches along a side; this transformer's RoPE "
                         f"covers {transformer.config.rope_max_seq_len} (rope_max_seq_len): use a smaller size")
    return WanVideoModel(cfg, transformer, shared or load_shared(cfg.pipeline))
