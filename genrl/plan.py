"""Memory plan of a distillation recipe, before anything is downloaded or allocated.

Every role's architecture is built on the ``meta`` device from its config (a local
folder's config.json, or a named preset when the folder is not on this machine),
so parameter counts are exact. Memory per role follows from the dtype it runs in:
trainable roles hold float32 weights, float32 gradients and two AdamW moments
(16 bytes a parameter); an EMA holds float32 weights; frozen roles (teacher, text
encoder, VAE, reward) hold weights in ``train.frozen_dtype`` (bfloat16 on GPUs).

Activation memory is an estimate, stated as one: per transformer layer and token,
a bf16 training step keeps about ``16 d + 2 ffn`` values for backward (attention
through a fused kernel, so no score matrix); with activation checkpointing only
each layer's input (``d`` values) plus one layer's full set. The VAE decode
workspace and the reward model's own activations are not included.
"""

from __future__ import annotations

import json
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

    @property
    def weight_bytes(self) -> int:
        return self.params * torch.finfo(getattr(torch, self.dtype)).bits // 8

    @property
    def state_bytes(self) -> int:
        """Gradients (float32) and AdamW's two moments (float32) of a trainable role."""
        return self.params * 12 if self.trainable else 0

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes


@dataclass
class Plan:
    roles: list[RolePlan]
    tokens: int
    """Video tokens of one training sample (latent frames x patches per frame)."""
    batch: int
    activations: dict[str, int] = field(default_factory=dict)
    """'none' / 'checkpointing': estimated bytes kept for backward in the largest step."""
    chunk_frames: int = 3
    """Latent frames of the streaming student's chunks (its rollout's activations are the largest step's)."""

    def fits(self, gpus: int, gpu_bytes: int) -> list[dict]:
        """Options and the memory each needs per GPU."""
        frozen = sum(r.total_bytes for r in self.roles if not r.trainable and not r.ema)
        trainable = sum(r.total_bytes for r in self.roles if r.trainable or r.ema)
        biggest_frozen = max((r.weight_bytes / max(r.layers, 1) for r in self.roles if not r.trainable and not r.ema), default=0)
        teacher = sum(r.weight_bytes for r in self.roles if r.name == "teacher")
        # (option, activations kept, frozen bytes on a GPU, trainable roles sharded over, supported, tokens split over)
        options = [
            ("data parallel, everything on each GPU", "none", frozen, 1, True, 1),
            ("+ activation checkpointing", "checkpointing", frozen, 1, True, 1),
            ("+ frozen roles offloaded to CPU", "checkpointing", biggest_frozen, 1, True, 1),
            (f"+ teacher sharded over {gpus} GPUs (train.shard_frozen)", "checkpointing", frozen - teacher + teacher / gpus,
             1, True, 1),
        ]
        split, share = self.sequence_parallel(gpus)
        if split > 1:
            options.append((f"data parallel, parallel.sequence={split}, no checkpointing", "none", frozen, 1, True, share))
        options.append((f"FSDP full shard over {gpus} GPUs + checkpointing", "checkpointing", frozen / gpus, gpus, False, 1))
        rows = []
        for name, act, frozen_gpu, shard, supported, act_share in options:
            need = int(trainable / shard + frozen_gpu + self.activations[act] * act_share)
            rows.append({"option": name, "per_gpu_bytes": need, "fits": need <= gpu_bytes, "supported": supported})
        return rows

    def sequence_parallel(self, gpus: int) -> tuple[int, float]:
        """The ``parallel.sequence`` these GPUs allow that leaves each rank the least of the student's activations,
        and that share. The split divides the GPU count and the heads of every DiT it splits (teacher, critic,
        student); the student's rollout pads each chunk of ``chunk_frames`` frames to a multiple of it, so a rank
        computes ceil(chunk / N) of every chunk's frames (of 3, 1 for N = 3 and for N = 4 alike; the smaller wins)."""
        heads = [r.heads for r in self.roles if r.name in ("teacher", "critic", "student") and r.heads]
        allowed = [n for n in range(1, gpus + 1) if gpus % n == 0 and heads and all(h % n == 0 for h in heads)] or [1]
        share = {n: -(-self.chunk_frames // n) / self.chunk_frames for n in allowed}
        best = min(allowed, key=lambda n: (share[n], n))
        return best, share[best]

    def to_json(self, gpus: int, gpu_bytes: int) -> dict:
        return {"roles": [dict(r.__dict__, weight_bytes=r.weight_bytes, state_bytes=r.state_bytes,
                               total_bytes=r.total_bytes) for r in self.roles],
                "tokens": self.tokens, "batch": self.batch, "activation_bytes": self.activations,
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
    raise ValueError(f"unknown architecture kind {kind!r}")


def _folder_arch(path: Path) -> tuple[str, dict] | None:
    """(kind, config) read from a local diffusers/transformers folder, or None."""
    for folder in (path / "transformer", path):
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
            if data.get("model_type") in ("qwen2_vl",):
                return "qwen2_vl", {k: v for k, v in data.items() if k not in ("architectures", "model_type") and not k.startswith("_")}
    return None


def arch_of(path: str, preset: str, what: str) -> tuple[str, tuple[str, dict]]:
    """The architecture of a role: its local folder when present, else the named preset."""
    from .errors import UsageError

    if path and Path(path).is_dir():
        found = _folder_arch(Path(path))
        if found:
            return str(path), found
    if preset:
        if preset not in PRESETS:
            raise UsageError(f"unknown architecture {preset!r} for {what}; valid: {', '.join(PRESETS)}")
        return preset, PRESETS[preset]
    raise UsageError(f"{what}: {path or '(not set)'} is not a local model folder; name its architecture with "
                     f"arch.{what}=NAME ({', '.join(PRESETS)})")


def _role(name: str, arch: tuple[str, tuple[str, dict]], dtype: str, trainable=False, ema=False) -> RolePlan:
    label, (kind, config) = arch
    model = _build_meta(kind, config)
    params = sum(p.numel() for p in model.parameters())
    dim = layers = ffn = heads = 0
    if kind == "wan_transformer":
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        layers, ffn, heads = config["num_layers"], config["ffn_dim"], config["num_attention_heads"]
    elif kind == "umt5":
        layers = config["num_layers"]
    elif kind == "qwen2_vl":
        layers = config["text_config"]["num_hidden_layers"]
    return RolePlan(name, label, params, dtype, trainable, ema, layers, dim, ffn, heads)


def activation_bytes(student: RolePlan, tokens: int, batch: int, checkpointing: bool, bytes_per_value: int = 2) -> int:
    """Estimated values a training step keeps for backward through a transformer (see the module docstring)."""
    per_layer = (16 * student.dim + 2 * student.ffn) * tokens * batch * bytes_per_value
    if not checkpointing:
        return per_layer * student.layers
    return student.dim * tokens * batch * bytes_per_value * student.layers + per_layer


def plan_distill(cfg, frozen: str = "bfloat16") -> Plan:
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
    student = next(r for r in roles if r.name == "student")
    latent_frames = (cfg.world.frames - 1) // 4 + 1
    height, width = cfg.height or 480, cfg.width or 832
    tokens = latent_frames * (height // 16) * (width // 16)
    batch = cfg.dmd.batch_size if cfg.method != "ode_init" else cfg.ode.batch_size
    acts = {k: activation_bytes(student, tokens, batch, k == "checkpointing") for k in ("none", "checkpointing")}
    from .models.wan import WanDiTConfig

    return Plan(roles, tokens, batch, acts, WanDiTConfig().chunk_frames)


def parse_memory(text: str) -> int:
    """'80GB', '80G', '141 GiB' -> bytes (GB read as GiB, as GPU specs mean it)."""
    import re

    from .errors import UsageError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib)?\s*", text.lower())
    if not m:
        raise UsageError(f"--gpu-memory {text!r}: give a size such as 80GB")
    return int(float(m.group(1)) * GB)
