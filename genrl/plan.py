"""Memory plan of a distillation recipe, before anything is downloaded or allocated.

Every role's architecture is built on the ``meta`` device from its config (a local
folder's config.json, or a named preset when the folder is not on this machine),
so parameter counts are exact. Memory per role follows from the dtype it runs in:
trainable roles hold float32 weights, float32 gradients and two AdamW moments
(16 bytes a parameter); an EMA holds float32 weights; frozen roles (teacher, text
encoder, VAE, reward) hold weights in ``train.frozen_dtype`` (bfloat16 on GPUs).

Activation memory is measured, not estimated by a formula: the trained roles' passes
run on this machine's CPU under bfloat16 autocast (as ``accelerate launch
--mixed_precision bf16`` runs them) with the real architecture at its full width but
2 blocks, at the recipe's frames, chunking and batch but 4 and 8 video tokens a latent
frame, and autograd's saved-tensor hooks count what each pass keeps for backward
(:mod:`genrl.memory`). Both grow linearly in the tokens a frame (attention runs through
a fused kernel: no score matrix is kept) and in the blocks, so the two sizes extrapolate
exactly to the real frame size and depth. The passes are the student's streamed
rollout (every chunk's gradient-carrying pass against the KV cache, which is counted
too) and the critic's pass over a whole sample. With activation checkpointing a block
keeps its input of every call, plus one call's full set while it runs again. Stream-R1's
saliency pass (``stream_r1.intra`` with VideoReward) runs the reward model over the decoded
rollouts with gradients to their pixels while the student's graph waits: its vision tower
and language model are measured the same way at 2 blocks (:func:`reward_pass`) and held
beside the student's pass. Not included: the VAE decode's transient memory (it keeps
nothing: its input is detached), and kernels' workspaces; CUDA's autocast casts a few ops
differently from the CPU's.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

GB = 1024**3

WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                  freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
PRESETS: dict[str, tuple[str, dict]] = {
    "wan2.1-t2v-1.3b": ("wan_transformer", dict(WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30)),
    "wan2.1-t2v-14b": ("wan_transformer", dict(WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40)),
    "umt5-xxl": ("umt5", dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)),
    "wan2.1-vae": ("wan_vae", {}),
    "videoreward-qwen2-vl-2b": ("qwen2_vl", dict(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True)),
}
_MROPE = {"type": "mrope", "mrope_section": [16, 24, 24]}
_QWEN2_VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2)
_QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu", patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
PRESETS.update({  # the released Instruct models' configs
    "qwen2-vl-2b": PRESETS["videoreward-qwen2-vl-2b"],
    "qwen2-vl-7b": ("qwen2_vl", dict(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, rope_scaling=_MROPE),
        vision_config=dict(_QWEN2_VISION, hidden_size=3584), tie_word_embeddings=False)),
    "qwen2.5-vl-3b": ("qwen2_5_vl", dict(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True, rope_scaling=_MROPE),
        vision_config=dict(_QWEN25_VISION, out_hidden_size=2048), tie_word_embeddings=True)),
    "qwen2.5-vl-7b": ("qwen2_5_vl", dict(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, rope_scaling=_MROPE),
        vision_config=dict(_QWEN25_VISION, out_hidden_size=3584), tie_word_embeddings=False)),
})


@dataclass
class RolePlan:
    name: str
    arch: str
    params: int
    dtype: str
    trainable: bool = False
    ema: bool = False
    layers: int = 0
    dim: int = 0
    ffn: int = 0
    heads: int = 0
    frozen_params: int = 0
    """Parameters of a trainable role that stay frozen (a policy's vision tower)."""

    @property
    def bytes_per_param(self) -> int:
        return torch.finfo(getattr(torch, self.dtype)).bits // 8

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def state_bytes(self) -> int:
        """Gradients and AdamW's two moments of a trainable role's trained parameters, in its dtype (float32 for
        genrl's trained roles, unless a policy is loaded in bf16)."""
        return (self.params - self.frozen_params) * 3 * self.bytes_per_param if self.trainable else 0

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes


@dataclass
class Plan:
    roles: list[RolePlan]
    tokens: int
    """Video tokens of one training sample (latent frames x patches per frame)."""
    batch: int
    passes: dict[str, "PassMemory"] = field(default_factory=dict)
    """Measured memory of each trained pass: 'student' (the streamed rollout), 'critic' (a whole sample)."""
    chunk_frames: int = 3
    """Latent frames of the streaming student's chunks."""
    frames: int = 21
    """Latent frames of a training sample."""
    reward: RewardPass | None = None
    """Stream-R1's saliency pass through the reward model (held beside the student's rollout), when it has one."""

    def beside(self, name: str, checkpointing: bool = False) -> int:
        """Bytes held beside pass ``name`` for all of it: the reward's saliency pass beside the student's rollout
        (the generator step scores the rollout while its graph waits for the DMD loss)."""
        return self.reward.total(checkpointing) if self.reward is not None and name == "student" else 0

    @property
    def activations(self) -> dict[str, int]:
        """'none' / 'checkpointing': bytes of the largest step's activations (and the KV cache beside them)."""
        return {k: max(p.total(k == "checkpointing") + self.beside(n, k == "checkpointing") for n, p in self.passes.items())
                for k in ("none", "checkpointing")}

    def split_activations(self, n: int) -> int:
        """The largest step's activations per rank with ``parallel.sequence=n`` and no checkpointing: the
        streamed rollout pads each chunk to a multiple of n (a rank computes ceil(chunk / n) of its frames)
        and keeps its heads of the KV cache (1/n); the critic's pass splits the sample's frames."""
        out = 0
        for name, p in self.passes.items():
            span = self.chunk_frames if name == "student" else self.frames
            out = max(out, int(p.kept * (-(-span // n)) / span + p.cache / n) + self.beside(name))  # reward: whole
        return out

    def fits(self, gpus: int, gpu_bytes: int) -> list[dict]:
        """Options and the memory each needs per GPU."""
        frozen = sum(r.total_bytes for r in self.roles if not r.trainable and not r.ema)
        trainable = sum(r.total_bytes for r in self.roles if r.trainable or r.ema)
        biggest_frozen = max((r.weight_bytes / max(r.layers, 1) for r in self.roles if not r.trainable and not r.ema), default=0)
        teacher = sum(r.weight_bytes for r in self.roles if r.name == "teacher")
        acts = self.activations
        # (option, activation bytes, frozen bytes on a GPU, trainable roles sharded over, supported)
        options = [
            ("data parallel, everything on each GPU", acts["none"], frozen, 1, True),
            ("+ activation checkpointing", acts["checkpointing"], frozen, 1, True),
            ("+ frozen roles offloaded to CPU", acts["checkpointing"], biggest_frozen, 1, True),
            (f"+ teacher sharded over {gpus} GPUs (train.shard_frozen)", acts["checkpointing"],
             frozen - teacher + teacher / gpus, 1, True),
        ]
        split = self.sequence_parallel(gpus)
        if split > 1:
            options.append((f"data parallel, parallel.sequence={split}, no checkpointing", self.split_activations(split),
                            frozen, 1, True))
        options.append((f"FSDP full shard over {gpus} GPUs + checkpointing", acts["checkpointing"], frozen / gpus, gpus,
                        False))
        rows = []
        for name, act, frozen_gpu, shard, supported in options:
            need = int(trainable / shard + frozen_gpu + act)
            rows.append({"option": name, "per_gpu_bytes": need, "fits": need <= gpu_bytes, "supported": supported})
        return rows

    def sequence_parallel(self, gpus: int) -> int:
        """The ``parallel.sequence`` these GPUs allow that leaves each rank the least activations (the smallest
        such split on a tie). It divides the GPU count and the heads of every DiT it splits (teacher, critic,
        student)."""
        heads = [r.heads for r in self.roles if r.name in ("teacher", "critic", "student") and r.heads]
        allowed = [n for n in range(1, gpus + 1) if gpus % n == 0 and heads and all(h % n == 0 for h in heads)] or [1]
        return min(allowed, key=lambda n: (self.split_activations(n), n))

    def to_json(self, gpus: int, gpu_bytes: int) -> dict:
        return {"roles": [dict(r.__dict__, weight_bytes=r.weight_bytes, state_bytes=r.state_bytes,
                               total_bytes=r.total_bytes) for r in self.roles],
                "tokens": self.tokens, "batch": self.batch, "activation_bytes": self.activations,
                "passes": {k: dict(v.__dict__) for k, v in self.passes.items()},
                "reward_pass": None if self.reward is None else dict(self.reward.__dict__, total=self.reward.total(),
                                                                     total_checkpointed=self.reward.total(True)),
                "gpus": gpus, "gpu_bytes": gpu_bytes, "options": self.fits(gpus, gpu_bytes)}


# ----------------------------------------------------------------- architectures
def _build_meta(kind: str, config: dict) -> torch.nn.Module:
    with torch.device("meta"):
        if kind == "wan_transformer":
            from diffusers import WanTransformer3DModel

            return WanTransformer3DModel(**config)
        if kind == "wan_vae":
            from diffusers import AutoencoderKLWan

            return AutoencoderKLWan(**config)
        if kind == "umt5":
            from transformers import UMT5Config, UMT5EncoderModel

            return UMT5EncoderModel(UMT5Config(**config))
        if kind == "qwen2_vl":
            from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

            return Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
        if kind == "qwen2_5_vl":
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

            return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    raise ValueError(f"unknown architecture kind {kind!r}")


def _folder_arch(path: Path) -> tuple[str, dict] | None:
    """(kind, config) read from a local diffusers/transformers folder, or None."""
    for folder in (path / "transformer", path / "model", path):
        cfg = folder / "config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            if data.get("_class_name") == "WanTransformer3DModel":
                return "wan_transformer", {k: v for k, v in data.items() if not k.startswith("_")}
            if data.get("_class_name") == "AutoencoderKLWan":
                return "wan_vae", {k: v for k, v in data.items() if not k.startswith("_")}
            if data.get("model_type") in ("umt5", "t5"):
                keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj",
                        "relative_attention_num_buckets")
                return "umt5", {k: data[k] for k in keys if k in data}
            if data.get("model_type") in ("qwen2_vl", "qwen2_5_vl"):
                return data["model_type"], {k: v for k, v in data.items()
                                            if k not in ("architectures", "model_type") and not k.startswith("_")}
    return None


def arch_of(path: str, preset: str, what: str, kinds: tuple[str, ...] = (), option: str = "") -> tuple[str, tuple[str, dict]]:
    """The architecture of a role: its local folder when present, else the named preset (one of ``kinds``
    when given, named by ``option``, by default ``arch.<what>=NAME``)."""
    from .errors import UsageError

    valid = [n for n, (k, _) in PRESETS.items() if not kinds or k in kinds]
    if path and Path(path).is_dir():
        found = _folder_arch(Path(path))
        if found:
            return str(path), found
    if preset:
        if preset not in valid:
            raise UsageError(f"unknown architecture {preset!r} for {what}; valid: {', '.join(valid)}")
        return preset, PRESETS[preset]
    raise UsageError(f"{what}: {path or '(not set)'} is not a local model folder; name its architecture with "
                     f"{option or f'arch.{what}='}NAME ({', '.join(valid)})")


def _role(name: str, arch: tuple[str, tuple[str, dict]], dtype: str, trainable=False, ema=False,
          model: torch.nn.Module | None = None) -> RolePlan:
    """A role of this architecture, counted on ``model`` (its meta build, made here when not given)."""
    label, (kind, config) = arch
    model = _build_meta(kind, config) if model is None else model
    params = sum(p.numel() for p in model.parameters())
    dim = layers = ffn = heads = 0
    if kind == "wan_transformer":
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        layers, ffn, heads = config["num_layers"], config["ffn_dim"], config["num_attention_heads"]
    elif kind == "umt5":
        layers = config["num_layers"]
    elif kind in ("qwen2_vl", "qwen2_5_vl"):
        text = text_config(config)
        layers, dim, ffn = text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"]
        heads = text["num_attention_heads"]
    return RolePlan(name, label, params, dtype, trainable, ema, layers, dim, ffn, heads)


def text_config(config: dict) -> dict:
    """The language model's keys of a Qwen-VL config: its text_config, or the top level of older configs."""
    return config.get("text_config") or config


@dataclass
class RewardPass:
    """Stream-R1's saliency pass (``stream_r1.intra``): the reward model over a step's decoded rollouts, with
    gradients to their pixels, its graph kept while each axis's gradient is taken."""

    frames_read: int
    """Frames of a rollout the reward reads."""
    size: tuple[int, int]
    """(height, width) they are resized to."""
    vision_tokens: int
    """Patches of a rollout through the vision tower."""
    text_tokens: int
    """Tokens of a row through the language model: the merged video tokens and :data:`REWARD_TEXT_TOKENS`."""
    vision: int
    """What the vision towers' passes keep, over the batch (measured, extrapolated)."""
    language: int
    """What the language model's passes keep, over the batch (measured, extrapolated)."""
    pixels: int
    """The decoded rollouts in float32, their gradient, and one saliency map a frame and axis."""
    vision_checkpointed: int = 0
    """:attr:`vision` with ``train.activation_checkpointing`` (each block's input, one block's set again)."""
    language_checkpointed: int = 0
    """:attr:`language` with ``train.activation_checkpointing``."""

    def total(self, checkpointing: bool = False) -> int:
        if checkpointing:
            return self.vision_checkpointed + self.language_checkpointed + self.pixels
        return self.vision + self.language + self.pixels


REWARD_TEXT_TOKENS = 256
"""Tokens allowed for the reward's chat template, trained prompt and caption around the video."""


def reward_pass(kind: str, config: dict, frames: int, height: int, width: int, batch: int, axes: int,
                dtype: torch.dtype = torch.bfloat16, advance=lambda: None) -> RewardPass:
    """:class:`RewardPass` of a VideoReward-style Qwen2-VL reward (weights in ``dtype``) reading ``batch`` decoded
    rollouts of ``frames`` frames at ``height`` x ``width``, as genrl's VideoReward reads tensors: 2 frames a
    second of 16, within 448 x 448. Its vision tower and language model are measured at 2 blocks each (see
    :func:`genrl.policy_plan.vision_memory`, :func:`genrl.policy_plan.lm_memory`)."""
    from .models.qwen_vision import VisionPrepConfig, frame_indices, target_size
    from .policy_plan import MEASURED_TOKENS as LM_TOKENS
    from .policy_plan import VISION_MEASURED, _lm_pass, _vision_pass, lm_memory, vision_memory

    prep = VisionPrepConfig(max_pixels=448 * 448)  # rewards.videoreward's defaults
    read = len(frame_indices(frames, 16.0, prep))
    h, w = target_size(height, width, prep)
    p, m, tp = prep.patch_size, prep.merge_size, prep.temporal_patch_size
    patches = -(-read // tp) * (h // p) * (w // p)
    tokens = patches // (m * m) + REWARD_TEXT_TOKENS
    vision = []
    for n in VISION_MEASURED:
        vision.append(_vision_pass(kind, config, dtype, n))
        advance()
    lm = []
    for n in LM_TOKENS:
        lm.append(_lm_pass(kind, config, dtype, n))
        advance()
    blocks = config.get("vision_config", {}).get("depth", 32)
    layers = text_config(config)["num_hidden_layers"]
    pixels = batch * frames * height * width * 4 * (3 + 3 + axes)
    v, t = vision_memory(vision, blocks, patches), lm_memory(lm, layers, tokens)
    # checkpointed, each rollout's blocks keep their inputs, and a block's set while it runs again, counted once a
    # rollout (one at a time runs again: exact for one rollout a step, a little high for more)
    return RewardPass(read, (h, w), patches, tokens, batch * v.kept, batch * t.kept, pixels, batch * v.checkpointed,
                      batch * t.checkpointed)


@dataclass
class PassMemory:
    """Memory of one trained pass at the real depth and frame size (measured, then extrapolated)."""

    kept: int
    """Bytes saved for backward without checkpointing: activations and autocast's bf16 weight copies."""
    checkpointed: int
    """With activation checkpointing: each block call's input, one call's full set, the rest as without."""
    cache: int = 0
    """The KV cache at its fullest, held beside the activations (a streamed pass)."""

    def total(self, checkpointing: bool) -> int:
        return (self.checkpointed if checkpointing else self.kept) + self.cache

    @classmethod
    def of_blocks(cls, f: dict[str, float], layers: int, cache: int = 0) -> "PassMemory":
        """The pass of ``layers`` blocks from one block's figures and the rest's (see :func:`measure_blocks`):
        without checkpointing every block keeps its set; with it, its inputs, and one call its set again."""
        kept = f["outside"] + layers * (f["block"] + f["block_casts"])
        return cls(int(kept), int(f["outside"] + layers * (f["inputs"] + f["block_casts"]) + f["call"]), cache)


def fitted(measured: list[dict[str, int]], at: tuple[int, int], x: int) -> dict[str, float]:
    """Each figure of two passes measured at sizes ``at``, taken linearly to size ``x``."""
    (lo, hi), (a, b) = at, measured
    return {k: a[k] + (b[k] - a[k]) * (x - lo) / (hi - lo) for k in a}


def materialise(kind: str, config: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """An architecture built on the CPU with small random weights: their values do not change what a pass
    saves, and finite ones keep every kernel on its usual path."""
    model = _build_meta(kind, config).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * 0.02)
    return model.to(dtype)


def measure_blocks(run, blocks, model: torch.nn.Module) -> dict[str, int]:
    """What ``run`` (a pass through ``blocks``, at least 2, of ``model``) keeps for backward: its second block's
    activations, autocast copies of that block's weights, hidden-state inputs and largest call, the rest of
    the pass ('outside'), and the whole pass ('kept')."""
    from .memory import tally

    with warnings.catch_warnings():  # CPU autocast hands rms_norm bf16 inputs with float32 weights; it says so
        warnings.simplefilter("ignore", UserWarning)
        got = tally(run, blocks, list(model.parameters()))
    # what the first block saves beyond the second is shared by every block (RoPE tables, the timestep's
    # modulation): it counts once, with the outside
    return {"outside": got.total - len(blocks) * (got.blocks[1] + got.block_casts[1]), "block": got.blocks[1],
            "block_casts": got.block_casts[1], "inputs": got.inputs[1], "call": max(got.calls[1]), "kept": got.total}


MEASURED_TOKENS = (4, 8)
"""Video tokens a latent frame of the measured passes (2 x 2 and 2 x 4 patches)."""


def _wan_pass(config: dict, tokens_per_frame: int, frames: int, batch: int, text_len: int,
              stream: tuple[int, int, int] | None, layers: int = 2) -> dict[str, int]:
    """One pass of a ``layers``-block Wan2.1 transformer of this config with gradients, under CPU bf16 autocast:
    the whole sample, or streamed ``(chunk, local, sink)`` frames at a time against the KV cache (each chunk's
    gradient-carrying pass, then the cache written from it without gradients). Bytes of its second block,
    of everything outside the blocks and of the KV cache a block at its fullest; and of the whole pass
    ('kept') and the whole cache ('cache_all')."""
    from .models.wan import WanDiT, WanDiTConfig

    model = materialise("wan_transformer", dict(config, num_layers=layers))
    gen = torch.Generator().manual_seed(0)
    _, ph, pw = config.get("patch_size", (1, 2, 2))
    h, w = 2 * ph, tokens_per_frame * pw // 2
    if (h // ph) * (w // pw) != tokens_per_frame:
        raise ValueError(f"{tokens_per_frame} tokens a frame do not tile {ph}x{pw} patches in 2 rows")
    dit = WanDiT(model, WanDiTConfig(chunk_frames=stream[0] if stream else 3))
    x = torch.randn(batch, frames, config.get("in_channels", 16), h, w, generator=gen)
    text = torch.randn(batch, text_len, config["text_dim"], generator=gen)
    t = torch.full((batch,), 500.0)
    fullest, outs = [0], []  # the outputs keep every pass's graph, as the training step does until backward

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if stream is None:
                outs.append(dit(x, t, text))
                return
            chunk, local, sink = stream
            cache = dit.new_cache((h, w), local, sink)
            for start in range(0, frames, chunk):
                y = dit(x[:, start : start + chunk], t, text, cache=cache)
                outs.append(y)
                if start + chunk < frames:
                    with torch.no_grad():
                        cache.writing = True
                        dit(y.detach(), torch.zeros(batch), text, cache=cache)
                        cache.writing = False
                    held = sum(a.untyped_storage().nbytes() for a in (*cache.k, *cache.v) if a is not None)
                    fullest[0] = max(fullest[0], held)

    return {**measure_blocks(run, model.blocks, model), "cache": fullest[0] // layers, "cache_all": fullest[0]}


_MEASURED: dict[str, dict[str, int]] = {}


def measure_pass(kind: str, config: dict, layers: int, tokens_per_frame: int, frames: int, batch: int, text_len: int,
                 stream: tuple[int, int, int] | None = None, advance=lambda: None) -> PassMemory:
    """The memory of a trained pass of this architecture at ``layers`` blocks and ``tokens_per_frame`` tokens a
    latent frame: measured at 2 blocks and :data:`MEASURED_TOKENS` tokens a frame, every figure extrapolated
    linearly in the tokens a frame and each block's in the blocks (see the module docstring)."""
    if kind != "wan_transformer":
        raise ValueError(f"no measured pass for {kind!r} architectures")
    sizes = []
    for n in MEASURED_TOKENS:
        key = json.dumps([config, n, frames, batch, text_len, stream], sort_keys=True, default=str)
        if key not in _MEASURED:
            _MEASURED[key] = _wan_pass(config, n, frames, batch, text_len, stream)
        sizes.append(_MEASURED[key])
        advance()
    f = fitted(sizes, MEASURED_TOKENS, tokens_per_frame)
    return PassMemory.of_blocks(f, layers, int(layers * f["cache"]) if stream else 0)


def plan_distill(cfg, frozen: str = "bfloat16", quiet: bool = True) -> Plan:
    """The memory plan of a `genrl distill` recipe on Wan2.1 (``cfg`` a DistillConfig)."""
    a = cfg.arch
    teacher_arch = arch_of(cfg.teacher, a.teacher, "teacher")
    student_arch = arch_of(cfg.student, a.student, "student") if (cfg.student or a.student) else teacher_arch
    critic_arch = arch_of(cfg.critic, a.critic, "critic") if (cfg.critic or a.critic) else teacher_arch
    roles = [_role("teacher", teacher_arch, frozen)]
    if cfg.method != "ode_init":
        roles.append(_role("critic", critic_arch, "float32", trainable=True))
    roles += [_role("student", student_arch, "float32", trainable=True), _role("ema", student_arch, "float32", ema=True),
              _role("text encoder", arch_of(str(Path(cfg.teacher) / "text_encoder"), "umt5-xxl", "text encoder"), frozen),
              _role("vae", arch_of(str(Path(cfg.teacher) / "vae"), "wan2.1-vae", "vae"), frozen)]
    if cfg.method == "stream_r1" and cfg.stream_r1.reward == "videoreward":
        roles.append(_role("reward", arch_of(cfg.stream_r1.reward_weights, a.reward, "reward"), frozen))
    from .models.wan import WanConfig, WanDiTConfig

    latent_frames = (cfg.world.frames - 1) // 4 + 1
    height, width = cfg.height or 480, cfg.width or 832
    _, ph, pw = student_arch[1][1].get("patch_size", (1, 2, 2))
    per_frame = (height // 8 // ph) * (width // 8 // pw)
    batch = cfg.dmd.batch_size if cfg.method != "ode_init" else cfg.ode.batch_size
    chunk, st = WanDiTConfig().chunk_frames, cfg.streaming
    layers = {r.name: r.layers for r in roles}
    from .progress import progress_bar

    critic = cfg.method != "ode_init"
    saliency = cfg.method == "stream_r1" and cfg.stream_r1.reward == "videoreward" and cfg.stream_r1.intra
    from .policy_plan import MEASURED_TOKENS as LM_TOKENS
    from .policy_plan import VISION_MEASURED

    reward_passes = len(VISION_MEASURED) + len(LM_TOKENS) if saliency else 0
    with progress_bar((2 if critic else 1) * len(MEASURED_TOKENS) + reward_passes, "measuring passes on the CPU",
                      quiet) as advance:
        passes = {"student": measure_pass(*student_arch[1], layers["student"], per_frame, latent_frames, batch,
                                          WanConfig().max_text_len, (chunk, st.local_frames, st.sink_frames), advance)}
        if critic:
            passes["critic"] = measure_pass(*critic_arch[1], layers["critic"], per_frame, latent_frames, batch,
                                            WanConfig().max_text_len, advance=advance)
        reward = None
        if saliency:
            _, (kind, config) = arch_of(cfg.stream_r1.reward_weights, a.reward, "reward")
            reward = reward_pass(kind, config, cfg.world.frames, height, width, batch, len(cfg.stream_r1.axes),
                                 getattr(torch, frozen), advance)
    return Plan(roles, latent_frames * per_frame, batch, passes, chunk, latent_frames, reward)


def parse_memory(text: str) -> int:
    """'80GB', '80G', '141 GiB' -> bytes (GB read as GiB, as GPU specs mean it)."""
    import re

    from .errors import UsageError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib)?\s*", text.lower())
    if not m:
        raise UsageError(f"--gpu-memory {text!r}: give a size such as 80GB")
    return int(float(m.group(1)) * GB)
