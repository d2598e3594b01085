"""A transformers Qwen2-VL / Qwen2.5-VL model as a genrl policy (local weights only).

GRPO, evaluation and the QA helpers talk to a policy through five things:
``encode_video`` (vision tower once per clip, so embeddings can be cached),
``token_logprobs`` and ``generate`` (both taking those embeddings), a
``tokenizer`` with ``batch``/``decode``, and ``cfg`` (clip geometry).
:class:`QwenVLPolicy` provides them over a ``*ForConditionalGeneration``
model:

- pixels are prepared in torch exactly as the Qwen2-VL processor lays them out
  (2-frame temporal patches, 14-pixel patches in merge order, CLIP
  normalisation; see :func:`genrl.models.qwen_vision.prepare_pixels`);
- the prompt is the chat template for one user turn holding the video then the
  question; the cached video embeddings are written over the ``<|video_pad|>``
  token embeddings, and M-RoPE positions come from the model's own
  ``get_rope_index``, so a cached pass equals the model's pixel pass;
- sampling is genrl's own loop over the model's KV cache (seeded by a torch
  generator, greedy at temperature 0); new text positions continue from the
  prompt's largest position, as transformers' generation does.

Nothing is downloaded: ``from_pretrained`` runs with ``local_files_only``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..parallel.shard import is_sharded
from .vlm import CompletionPolicy, pad_batch, sample_completions

ARCHITECTURES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
SYSTEM = "You are a helpful assistant."


@dataclass
class QwenVLPolicyConfig:
    """How clips reach a transformers Qwen-VL policy."""

    path: str = ""
    """Local folder with config.json, weights and tokenizer files."""
    frames: int = 8
    height: int = 32
    width: int = 32
    """Clip geometry the policy is fed (every clip of a run has the same)."""
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    """Bounds of the per-frame area after the processor's resize to multiples of 28."""
    system: str = SYSTEM
    """System turn of the chat template ('' = none)."""
    vision: dict = field(default_factory=dict)
    """Overrides of :class:`genrl.models.qwen_vision.VisionPrepConfig` (patch sizes, mean, std)."""


def is_hf_folder(path: str | Path) -> bool:
    """A local transformers checkpoint of a supported Qwen-VL architecture."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    try:
        return json.loads((p / "config.json").read_text()).get("model_type") in ARCHITECTURES
    except json.JSONDecodeError:
        return False


def language_model_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a transformers Qwen-VL model, in every layout transformers has used."""
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", inner)


def vision_tower_of(model: nn.Module) -> nn.Module:
    """The vision tower of a transformers Qwen-VL model, in every layout transformers has used."""
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None) or model.visual


class _Tokens:
    """The tokenizer surface genrl's QA code uses, over a transformers tokenizer."""

    def __init__(self, tok, eos_id: int, pad_id: int):
        self.tok, self.eos_id, self.pad_id = tok, eos_id, pad_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def batch(self, texts: list[str], left_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch([self.encode(t) for t in texts], self.pad_id, left_pad)


class QwenVLPolicy(CompletionPolicy):
    """A transformers Qwen2-VL / Qwen2.5-VL model behind genrl's policy interface."""

    def __init__(self, model: nn.Module, tokenizer, cfg: QwenVLPolicyConfig):
        super().__init__()
        from .qwen_vision import VisionPrepConfig

        self.model, self.cfg = model, cfg
        mc = model.config
        self.vision_cfg = VisionPrepConfig(**{"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels, **cfg.vision})
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.tokenizer = _Tokens(tokenizer, eos, pad)
        self.video_token_id = mc.video_token_id
        inner = getattr(model, "model", model)
        self.visual = vision_tower_of(model)
        self._rope_index = getattr(inner, "get_rope_index", None) or model.get_rope_index
        self._rope_takes_types = "mm_token_type_ids" in inspect.signature(self._rope_index).parameters
        self.grid = self._grid()  # (1, 3): temporal, height, width patches of every clip
        merge = self.vision_cfg.merge_size**2
        self.video_tokens = int(self.grid.prod()) // merge
        enc = self.tokenizer.encode
        system = f"<|im_start|>system\n{cfg.system}<|im_end|>\n" if cfg.system else ""
        head = enc(f"{system}<|im_start|>user\n") + [mc.vision_start_token_id]
        head += [self.video_token_id] * self.video_tokens + [mc.vision_end_token_id]
        self.register_buffer("head_ids", torch.tensor(head), persistent=False)
        self.register_buffer("tail_ids", torch.tensor(enc("<|im_end|>\n<|im_start|>assistant\n")), persistent=False)

    def _with_cache(self, cache) -> dict:
        """The KV-cache argument of the language model: ``cache`` from transformers 5.x on, ``past_key_values``
        before (read once from its signature, not at every sampled token)."""
        if not hasattr(self, "_cache_arg"):
            params = inspect.signature(self.language_model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
        return {self._cache_arg: cache}

    @staticmethod
    def _cache_of(out):
        cache = getattr(out, "cache", None)
        return out.past_key_values if cache is None else cache

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, **cfg) -> "QwenVLPolicy":
        import transformers
        from transformers import AutoTokenizer

        path = Path(path)
        if not is_hf_folder(path):
            raise UsageError(f"{path}: not a local Qwen2-VL / Qwen2.5-VL folder (config.json with model_type "
                             f"{' or '.join(ARCHITECTURES)})")
        kind = json.loads((path / "config.json").read_text())["model_type"]
        model_cls = getattr(transformers, ARCHITECTURES[kind])
        model = model_cls.from_pretrained(path, local_files_only=True, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(model, tok, QwenVLPolicyConfig(path=str(path), **cfg))

    def enable_activation_checkpointing(self) -> None:
        """Keep only each decoder layer's input for backward and re-run the layer there
        (``train.activation_checkpointing``): transformers' own checkpointing, non-reentrant, on the language
        model and the vision tower. Sampling, which runs without gradients, keeps its KV cache."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def checkpointing(self) -> bool:
        return bool(getattr(self.language_model, "gradient_checkpointing", False))

    @property
    def video_dim(self) -> int:
        """Width of the video embeddings :meth:`encode_video` returns (the language model's hidden size)."""
        return self.model.get_input_embeddings().embedding_dim

    def save_pretrained(self, folder: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
        """A transformers folder (config, weights, tokenizer files); ``weights``: this policy's whole state dict,
        when it is sharded."""
        folder = Path(folder)
        if weights is None:
            self.model.save_pretrained(folder)
        else:  # the policy's keys are the model's under "model." (and the vision tower's again under "visual.")
            self.model.save_pretrained(folder, state_dict={k[len("model."):]: v for k, v in weights.items()
                                                           if k.startswith("model.")})
        self.tokenizer.tok.save_pretrained(folder)
        return folder

    # ------------------------------------------------------------------ vision
    def _grid(self) -> torch.Tensor:
        from .qwen_vision import prepare_pixels

        probe = torch.zeros(self.cfg.frames, 3, self.cfg.height, self.cfg.width)
        return prepare_pixels(probe, self.vision_cfg)[1]

    def pixels(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, 3, H, W) in [0, 1] -> the processor's flattened patches (sum of patches, dim) and grids (B, 3)."""
        from .qwen_vision import prepare_pixels

        out = [prepare_pixels(v, self.vision_cfg) for v in videos]
        return torch.cat([p for p, _ in out]), torch.cat([g for _, g in out]).to(videos.device)

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """The vision tower (patch embed, ViT, 2x2 merger): clips -> embeddings (B, video_tokens, hidden)."""
        px, grid = self.pixels(videos)
        out = self.visual(px.to(self.visual.dtype if hasattr(self.visual, "dtype") else px.dtype), grid_thw=grid)
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (tuple, list)):
            feats = torch.cat(list(feats))
        return feats.reshape(videos.shape[0], -1, feats.shape[-1])  # (B, video_tokens, hidden) for whole clips

    # ---------------------------------------------------------------- sequences
    def _sequence(self, prompt_ids, prompt_mask, completion_ids=None, completion_mask=None):
        """Chat-template ids, mask and video-slot mask for each row, every pad moved to the far left.
        Only the template's slots are video: a completion that samples the video-pad id stays text."""
        B = prompt_ids.shape[0]
        dev = prompt_ids.device
        head, tail = self.head_ids.to(dev).expand(B, -1), self.tail_ids.to(dev).expand(B, -1)
        ids = torch.cat((head, prompt_ids, tail), 1)
        mask = torch.cat((torch.ones_like(head, dtype=torch.bool), prompt_mask.bool(),
                          torch.ones_like(tail, dtype=torch.bool)), 1)
        video = torch.zeros_like(mask)
        video[:, : head.shape[1]] = head == self.video_token_id
        order = torch.argsort(mask.int(), dim=1, stable=True)  # pads (0) first, real tokens keep their order
        ids, mask, video = ids.gather(1, order), mask.gather(1, order), video.gather(1, order)
        if completion_ids is not None:
            ids = torch.cat((ids, completion_ids), 1)
            mask = torch.cat((mask, completion_mask.bool()), 1)
            video = torch.cat((video, torch.zeros_like(completion_mask, dtype=torch.bool)), 1)
        return ids, mask, video

    def _embeds(self, ids: torch.Tensor, video: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        x = self.model.get_input_embeddings()(ids)
        return x.masked_scatter(video[..., None], video_emb.to(x.dtype))

    def _positions(self, ids: torch.Tensor, mask: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """M-RoPE positions (3, B, L) from the model's own rule."""
        grid = self.grid.to(ids.device).expand(ids.shape[0], -1)
        if not self._rope_takes_types:  # older transformers find the video by its token id
            ids = torch.where(video | (ids != self.video_token_id), ids, torch.full_like(ids, self.tokenizer.pad_id))
        kw = dict(video_grid_thw=grid, attention_mask=mask.long())
        if self._rope_takes_types:
            kw["mm_token_type_ids"] = video.int() * 2
        return self._rope_index(ids, **kw)[0]

    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (embeddings, layers, final norm) without the vision tower and the LM head."""
        return language_model_of(self.model)

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The language model's last hidden states (B, L, hidden), after its final norm, for whole sequences
        (``parallel.sequence`` swaps in a split version of this pass)."""
        return self.language_model(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions,
                                   use_cache=False).last_hidden_state

    # --------------------------------------------------------------- primitives
    def logits(self, video_emb, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """Logits (B, T, vocab) predicting each completion token (teacher forcing). The LM head runs on those
        T positions only: a (L, vocab) logit tensor over the whole prompt would be 151,646 wide per token."""
        ids, mask, video = self._sequence(prompt_ids, prompt_mask, completion_ids, completion_mask)
        h = self.hidden(self._embeds(ids, video, video_emb), mask, self._positions(ids, mask, video))
        T = completion_ids.shape[1]
        return self.model.get_output_embeddings()(h[:, -T - 1 : -1])

    @torch.no_grad()
    def generate(self, video_emb, prompt_ids, prompt_mask, max_new_tokens: int = 8, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample completions over the KV cache (greedy at temperature 0). Returns ids (B, T) and mask (B, T);
        a completion ends with (and includes) <|im_end|>; later positions hold the pad id, masked."""
        if not (self.checkpointing and self.model.training):
            return self._generate(video_emb, prompt_ids, prompt_mask, max_new_tokens, temperature, generator)
        # transformers before 5.x drop the KV cache of a checkpointed model in training mode, gradients or
        # not; sampling runs in eval mode then (the same outputs unless the config sets dropout)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            return self._generate(video_emb, prompt_ids, prompt_mask, max_new_tokens, temperature, generator)
        finally:
            for m, mode in modes:
                m.training = mode

    def _extend(self, embeds, mask, positions, cache=None):
        """A language-model pass over new positions with the KV cache; the LM head runs on the last position
        only (over a whole prompt its logits would be (B, L, vocab)). Returns (logits (B, vocab), cache)."""
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions,
                                  use_cache=True, **({} if cache is None else self._with_cache(cache)))
        return self.model.get_output_embeddings()(out.last_hidden_state[:, -1]), self._cache_of(out)

    def _generate(self, video_emb, prompt_ids, prompt_mask, max_new_tokens, temperature, generator):
        ids, mask, video = self._sequence(prompt_ids, prompt_mask)
        pos = self._positions(ids, mask, video)
        first, past = self._extend(self._embeds(ids, video, video_emb), mask, pos)
        cache = [past, mask]
        nxt = pos.amax(dim=(0, 2))  # (B,): text after the prompt continues from its largest position
        embed = self.model.get_input_embeddings()

        def step(tok: torch.Tensor) -> torch.Tensor:
            past, m = cache
            m = torch.cat((m, torch.ones_like(m[:, :1])), 1)
            p = (nxt + m.shape[1] - mask.shape[1]).view(1, -1, 1).expand(3, -1, 1)
            logits, cache[0] = self._extend(embed(tok)[:, None], m, p, past)
            cache[1] = m
            return logits

        return sample_completions(first, step, max_new_tokens, temperature, generator,
                                  self.tokenizer.eos_id, self.tokenizer.pad_id, is_sharded(self))
