"""Memory plan of a `genrl grpo` recipe with a transformers Qwen2-VL / Qwen2.5-VL policy.

The policy and its KL reference are built on the ``meta`` device (a local folder's config, or a named
preset), so parameter counts are exact. The policy trains its language model (and its vision tower with
``grpo.train_vision``): weights, gradients and AdamW's two moments in ``grpo.policy_dtype``; the frozen
tower and the reference hold weights only, the reference in bf16 (``train.frozen_dtype`` on a GPU).

A step's memory peaks in one of two places. Sampling holds the KV cache of every row the step rolls out
(prompts x group size, prompt and completion): that is allocation arithmetic from the config. Scoring
runs the language model with gradients over each pass's rows (``train.grad_accum`` passes a step) and the
LM head over their completion tokens; what those keep for backward is measured as :mod:`genrl.plan` does
for a DiT: the language model at full width with 2 decoder layers at 64 and 128 tokens, and the head at
2 vocabulary sizes and 2 completion lengths, under CPU bf16 autocast with autograd's saved-tensor hooks,
extrapolated linearly to the real depth, tokens and vocabulary (the head's float32 logits, which the
objective holds while it runs, are counted with it), plus the bool (rows, L, L) attention mask
transformers builds for sdpa once a row is padded. A row's length is its video tokens (from the clip
geometry, as the policy's processor resizes it), the completion (``grpo.max_new_tokens``) and an
allowance of :data:`TEXT_TOKENS` for the chat template and the question. Not counted: the vision tower's
activations (it is frozen, its embeddings cached, by default); kernels' workspaces.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch

from .plan import (PassMemory, RolePlan, _build_meta, _role, arch_of, fitted, materialise, measure_blocks,
                   text_config)

TEXT_TOKENS = 96
"""Tokens a row holds besides the video and the completion: system turn, chat template and question."""
MEASURED_TOKENS = (64, 128)
MEASURED_HEAD = ((8, 16), (512, 1024))
"""(completion lengths, vocabulary sizes) the LM head is measured at."""


@dataclass
class PolicyPlan:
    roles: list[RolePlan]
    prompts: int
    """Questions a step (per process)."""
    group: int
    passes: int
    """Scoring passes a step (``train.grad_accum``)."""
    video_tokens: int
    completion: int
    lm: list[dict]
    """The measured language-model passes (at :data:`MEASURED_TOKENS`), for :meth:`scoring`."""
    head: dict
    """Bilinear fit of the head's bytes in completion tokens and vocabulary: a + b C + c V + e C V."""
    layers: int
    vocab: int
    cache_per_token: int
    """KV-cache bytes a token of a sampled row (every layer's keys and values, bf16)."""
    gathered: int = 0
    """Bytes a sharded policy holds whole at once (``train.shard_trained``): its root unit (embeddings, LM head,
    norms, the tower's stem and merger) and two decoder layers (FSDP gathers the next while one runs), in the
    dtype they are gathered in (``train.shard_gather``), and the gradients of the root and of one layer before
    they are reduce-scattered, in the weights' dtype."""
    heads: int = 1
    """The language model's attention heads (``parallel.sequence`` must divide them)."""

    @property
    def tokens(self) -> int:
        """A row's tokens."""
        return TEXT_TOKENS + self.video_tokens + self.completion

    def rows(self, passes: int) -> int:
        """Rows of the largest of ``passes`` scoring passes."""
        return math.ceil(self.prompts / passes) * self.group

    def scoring(self, passes: int, split: int = 1) -> PassMemory:
        """What the largest scoring pass keeps: its rows through the language model, and the head over their
        completions. ``split``: ``parallel.sequence``, each rank's layers over its share of every row's tokens
        (the layers' activations are linear in the tokens; the head and the mask stay whole)."""
        rows = self.rows(passes)
        lm = lm_memory(self.lm, self.layers, rows * -(-self.tokens // split))
        head = int(head_memory(self.head, rows * self.completion, self.vocab))
        return PassMemory(lm.kept + head + self.mask(rows), lm.checkpointed + head + self.mask(rows))

    def mask(self, rows: int) -> int:
        """The bool (rows, 1, L, L) attention mask transformers builds for sdpa once a row is padded (rows of
        different lengths, or completions that ended early), shared by every layer."""
        return rows * self.tokens**2

    @property
    def sampling(self) -> int:
        """The KV cache of sampling every row of a step, at its longest."""
        return self.prompts * self.group * self.tokens * self.cache_per_token

    def fits(self, gpus: int, gpu_bytes: int) -> list[dict]:
        held = sum(r.total_bytes for r in self.roles)
        options = [(f"as configured (train.grad_accum={self.passes})", self.scoring(self.passes).kept),
                   ("+ activation checkpointing", self.scoring(self.passes).checkpointed)]
        if self.passes < self.prompts:
            options.append((f"+ one question's group a pass (train.grad_accum={self.prompts})",
                            self.scoring(self.prompts).checkpointed))
        options = [(name, act, held, True) for name, act in options]
        options.append((f"+ train.shard_trained and shard_frozen over {gpus} GPUs",
                        self.scoring(self.prompts).checkpointed, held / gpus + self.gathered, True))
        split = self.sequence_parallel(gpus)
        if split > 1:
            options.append((f"+ parallel.sequence={split}", self.scoring(self.prompts, split).checkpointed,
                            held / gpus + self.gathered, True))
        rows = []
        for name, act, weights, supported in options:
            need = int(weights + max(act, self.sampling))
            rows.append({"option": name, "per_gpu_bytes": need, "fits": need <= gpu_bytes, "supported": supported})
        return rows

    def sequence_parallel(self, gpus: int) -> int:
        """The largest ``parallel.sequence`` these GPUs allow (it divides the GPU count and the heads): the least
        of the layers' activations on each rank."""
        return max(n for n in range(1, gpus + 1) if gpus % n == 0 and self.heads % n == 0)

    def to_json(self, gpus: int, gpu_bytes: int) -> dict:
        split = self.sequence_parallel(gpus)
        return {"roles": [dict(r.__dict__, weight_bytes=r.weight_bytes, state_bytes=r.state_bytes,
                               total_bytes=r.total_bytes) for r in self.roles],
                "sequence_parallel": split, "split_scoring": dict(self.scoring(self.prompts, split).__dict__),
                "rows_per_pass": self.rows(self.passes), "tokens_per_row": self.tokens,
                "video_tokens": self.video_tokens, "completion_tokens": self.completion,
                "scoring": dict(self.scoring(self.passes).__dict__), "sampling_cache_bytes": self.sampling,
                "gathered_bytes": self.gathered, "gpus": gpus, "gpu_bytes": gpu_bytes, "options": self.fits(gpus, gpu_bytes)}


# ---------------------------------------------------------------------- measured
def _quietly(make):
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return make()
    finally:
        logging.set_verbosity(level)


def _lm_pass(kind: str, config: dict, dtype: torch.dtype, tokens: int, layers: int = 2) -> dict[str, int]:
    """The language model of a ``layers``-layer copy of this architecture (its vision tower cut to one block,
    its vocabulary to 1,024: neither is in the pass) over ``tokens`` tokens of one unpadded row, with
    gradients, under CPU bf16 autocast. Bytes of its second layer, of the rest, and of the whole pass."""
    from .models.hf_vlm import language_model_of

    cfg = copy.deepcopy(config)
    text = text_config(cfg)
    text.update(num_hidden_layers=layers, vocab_size=1024)
    text.pop("layer_types", None)  # one entry a layer in newer configs: rebuilt for the cut depth
    cfg.setdefault("vision_config", {})["depth"] = 1
    model = _quietly(lambda: materialise(kind, cfg, dtype))  # it notes the special tokens past the cut vocabulary
    lm = language_model_of(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, text["hidden_size"], generator=gen, dtype=dtype, requires_grad=True)
    pos = torch.arange(tokens).view(1, 1, -1).expand(3, 1, -1)
    mask = torch.ones(1, tokens, dtype=torch.long)
    outs = []

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state)

    return measure_blocks(run, lm.layers, model)


VISION_MEASURED = (16, 32)
"""Patches of the measured vision-tower passes (one frame pair of 4 x 4 and 4 x 8 patches)."""


def _vision_pass(kind: str, config: dict, dtype: torch.dtype, patches: int, layers: int = 2) -> dict[str, int]:
    """The vision tower of a ``layers``-block copy of this architecture (its language model cut to one layer and
    1,024 words: neither is in the pass) over one frame pair of 4 x ``patches / 4`` patches, with gradients to
    the pixels, under CPU bf16 autocast. Bytes of its second block, of the rest, and of the whole pass."""
    from .models.hf_vlm import vision_tower_of

    cfg = copy.deepcopy(config)
    text_config(cfg).update(num_hidden_layers=1, vocab_size=1024)
    text_config(cfg).pop("layer_types", None)
    cfg.setdefault("vision_config", {})["depth"] = layers
    model = _quietly(lambda: materialise(kind, cfg, dtype))
    visual = vision_tower_of(model)
    v = cfg["vision_config"]
    tp, p = v.get("temporal_patch_size", 2), v.get("patch_size", 14)
    pixels = torch.randn(patches, 3 * tp * p * p, generator=torch.Generator().manual_seed(3), dtype=dtype,
                         requires_grad=True)
    grid = torch.tensor([[1, 4, patches // 4]])

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            visual(pixels, grid_thw=grid)

    return measure_blocks(run, visual.blocks, model)


def vision_memory(measured: list[dict], blocks: int, patches: int) -> PassMemory:
    """The vision tower's pass over ``patches`` patches at ``blocks`` blocks, from the two measured passes
    (linear in the patches: attention runs through a fused kernel, within each frame pair)."""
    return PassMemory.of_blocks(fitted(measured, VISION_MEASURED, patches), blocks)


def _head_pass(dim: int, vocab: int, completion: int, dtype: torch.dtype, temperature: float) -> int:
    """Bytes the LM head and the completion log-probs keep for backward over ``completion`` tokens of one row,
    plus the float32 logits the objective holds, under CPU bf16 autocast."""
    from .memory import tally
    from .models.vlm import completion_logprobs

    gen = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(dim, vocab, bias=False).to(dtype)
    h = torch.randn(1, completion, dim, generator=gen, dtype=dtype, requires_grad=True)
    ids = torch.randint(vocab, (1, completion), generator=gen)
    outs = []

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(completion_logprobs(head(h), ids, temperature))

    got = tally(run, [], list(head.parameters()))
    return got.total + outs[0][1].untyped_storage().nbytes()


def _head_fit(dim: int, dtype: torch.dtype, temperature: float) -> dict[str, float]:
    (c1, c2), (v1, v2) = MEASURED_HEAD
    f = {(c, v): _head_pass(dim, v, c, dtype, temperature) for c in (c1, c2) for v in (v1, v2)}
    e = (f[c2, v2] - f[c2, v1] - f[c1, v2] + f[c1, v1]) / ((c2 - c1) * (v2 - v1))
    b = (f[c2, v1] - f[c1, v1]) / (c2 - c1) - e * v1
    c = (f[c1, v2] - f[c1, v1]) / (v2 - v1) - e * c1
    return {"a": f[c1, v1] - b * c1 - c * v1 - e * c1 * v1, "b": b, "c": c, "e": e}


def lm_memory(measured: list[dict], layers: int, tokens: int) -> PassMemory:
    """The language model's pass over ``tokens`` tokens at ``layers`` layers, from the two measured passes
    (linear in the tokens; each layer's share in the layers)."""
    return PassMemory.of_blocks(fitted(measured, MEASURED_TOKENS, tokens), layers)


def head_memory(fit: dict[str, float], completion: int, vocab: int) -> float:
    return fit["a"] + fit["b"] * completion + fit["c"] * vocab + fit["e"] * completion * vocab


# ---------------------------------------------------------------------- the plan
def video_tokens(frames: int, height: int, width: int, min_pixels: int, max_pixels: int) -> int:
    """Tokens of a clip as a Qwen2-VL policy sees it: frames in pairs, each frame resized to multiples of 28
    within the pixel bounds, 14-pixel patches merged 2 x 2."""
    from .models.qwen_vision import smart_resize

    h, w = smart_resize(height, width, 28, min_pixels, max_pixels)
    return (frames // 2) * (h // 28) * (w // 28)


def plan_grpo(cfg, arch: str = "", frozen: str = "bfloat16", quiet: bool = True) -> PolicyPlan:
    """The memory plan of a `genrl grpo` recipe (``cfg`` a GRPOConfig) whose policy is a transformers Qwen-VL
    folder (or, not on this machine, the preset ``arch``)."""
    from .models.hf_vlm import QwenVLPolicyConfig, vision_tower_of

    g = cfg.grpo
    qwen = ("qwen2_vl", "qwen2_5_vl")
    label, (kind, config) = arch_of(g.policy, arch, "policy", kinds=qwen, option="--arch ")
    if kind not in qwen:  # a local folder of another kind
        from .errors import UsageError

        raise UsageError(f"grpo.policy: {g.policy} is a {kind} folder; genrl plan covers Qwen2-VL / Qwen2.5-VL policies")
    meta = _build_meta(kind, config)  # built once: the policy's counts, its tower's, the reference's
    policy = _role("policy", (label, (kind, config)), g.policy_dtype, trainable=True, model=meta)
    visual = vision_tower_of(meta)
    roles = [replace(policy, frozen_params=0 if g.train_vision else sum(p.numel() for p in visual.parameters()))]
    if g.beta or g.variant == "veripo":
        roles.append(replace(policy, name="reference", dtype=frozen, trainable=False))
    text = text_config(config)
    dtype = getattr(torch, g.policy_dtype)
    from .progress import progress_bar

    with progress_bar(len(MEASURED_TOKENS) + 1, "measuring passes on the CPU", quiet) as advance:
        lm = []
        for n in MEASURED_TOKENS:
            lm.append(_lm_pass(kind, config, dtype, n))
            advance()
        head = _head_fit(text["hidden_size"], dtype, g.temperature)
        advance()
    geometry = QwenVLPolicyConfig()
    clip = video_tokens(g.qa.frames, g.qa.world.height, g.qa.world.width, geometry.min_pixels, geometry.max_pixels)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    per_token = 2 * text["num_hidden_layers"] * text.get("num_key_value_heads", text["num_attention_heads"]) * head_dim * 2
    return PolicyPlan(roles, g.prompts_per_step, g.group_size, cfg.train.grad_accum, clip, g.max_new_tokens, lm, head,
                      text["num_hidden_layers"], text["vocab_size"], per_token,
                      _gathered(meta, policy.bytes_per_param, 2 if cfg.train.shard_gather == "auto" else None),
                      text["num_attention_heads"])


def _gathered(model: torch.nn.Module, bytes_per_param: int, gather_bytes: int | None = None) -> int:
    """:attr:`PolicyPlan.gathered` of ``model`` sharded as :func:`genrl.parallel.shard` shards it: the weights
    held whole in ``gather_bytes`` a parameter (``train.shard_gather``: bf16 under the bf16 autocast the plan
    measures with; None, the weights' own), their gradients reduced in the weights' own bytes."""
    from .parallel.shard import units

    blocks = [sum(p.numel() for p in b.parameters()) for b in units(model)]
    root = sum(p.numel() for p in model.parameters()) - sum(blocks)
    weights = min(gather_bytes or bytes_per_param, bytes_per_param) * (root + 2 * max(blocks))
    return weights + bytes_per_param * (root + max(blocks))


def is_grpo_recipe(path: str) -> bool:
    """A config file whose top level has a ``grpo:`` section."""
    from pathlib import Path

    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "grpo" in data

