"""A tiny video-language model in the Qwen2-VL family's shape, built from a config.

- **Vision tower**: space-time patches (``temporal_patch`` frames x ``patch``
  x ``patch`` pixels), pre-norm transformer blocks with 3-D RoPE, then a
  merger that concatenates each ``merge`` x ``merge`` group of neighbouring
  patches and maps it through an MLP to the language model's width.
- **Language model**: decoder-only, RMSNorm, grouped-query attention, SwiGLU,
  tied embeddings, and multimodal RoPE: video tokens sit at (time, row, col)
  positions, text at (p, p, p), text positions continuing after the video's
  largest one.
- **Sequence**: ``[pad]* <vision_start> video <vision_end> prompt completion``.
  Prompts are left-padded; pads are masked out of attention and do not move
  any position, so a row's numbers do not depend on its batch.

Primitives the methods use: :meth:`encode_video` (the vision tower, cacheable
per prompt group), :meth:`token_logprobs` (teacher-forced log-probs of a
completion, from cached embeddings or from pixels) and :meth:`generate`
(KV-cached sampling). Departures from Qwen2-VL: a word-level tokenizer built
from the task's vocabulary (no download), 3-D RoPE in the vision tower instead
of 2-D, no window attention, and an optional conv stem (``stem_channels``)
before the patch embedding — the small shapes model needs it to see shape,
size and motion, not only colour. With ``causal_time`` the tower is causal in
time (temporal patches see only earlier ones, the stem pads time in front), so
a stream is encoded chunk by chunk and interleaved with text (VST,
``genrl/methods/vst.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import BlockCausal, attention
from ..parallel.shard import is_sharded
from .dit import RMSNorm, apply_rope, rope_angles, token_positions

SPECIALS = ("<pad>", "<eos>", "<unk>", "<vision_start>", "<vision_end>", "<think>", "</think>", "<answer>", "</answer>")
PAD, EOS, UNK, VSTART, VEND = range(5)


class WordTokenizer:
    """Whitespace word-level tokenizer over a fixed vocabulary (specials first)."""

    def __init__(self, words: list[str]):
        self.tokens = list(dict.fromkeys([*SPECIALS, *words]))
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, UNK) for w in text.split()]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            if int(i) in (EOS, PAD):
                break
            out.append(self.tokens[int(i)])
        return " ".join(out)

    eos_id, pad_id = EOS, PAD

    def batch(self, texts: list[str], left_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, L) and mask (B, L) of ``texts``, padded on the left or right."""
        return pad_batch([self.encode(t) for t in texts], self.pad_id, left_pad)


def pad_batch(seqs: list[list[int]], pad_id: int, left_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids (B, L) and mask (B, L), padded on the left or right."""
    L = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if left_pad else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = True
    return ids, mask


@dataclass
class VLMConfig:
    """Tiny video-language model."""

    words: list[str] = field(default_factory=list)
    """Vocabulary besides the special tokens (stored with the weights: the file rebuilds its tokenizer)."""
    frames: int = 8
    height: int = 32
    width: int = 32
    patch: int = 4
    temporal_patch: int = 2
    stem_channels: int = 0
    """Channels of a 3x3x3 conv stem before patchifying (0 = a plain linear patch embedding, as Qwen2-VL)."""
    merge: int = 2
    """Neighbouring patches (merge x merge) folded into one language-model token."""
    vision_dim: int = 96
    vision_depth: int = 3
    vision_heads: int = 4
    dim: int = 96
    depth: int = 3
    heads: int = 4
    kv_heads: int = 2
    mlp_hidden: int = 256
    rope_theta: float = 10000.0
    causal_time: bool = False
    """Streaming (VST): each temporal patch's tokens attend to their own and earlier patches only, and the conv
    stem pads time in front only (space stays circular), so the first k frames encode to exactly the first tokens
    of the whole clip and a stream encodes chunk by chunk (:meth:`VisionTower.forward` with a cache)."""


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd)
        self.out = nn.Linear(dim, dim, bias=False)
        self.core = attention
        """Softmax attention over [B, H, N, D] (sequence parallelism swaps in its all-to-all version)."""

    def forward(self, x, angles, mask, cache: dict | None = None):
        B, N, D = x.shape
        q = apply_rope(self.q(x).view(B, N, self.heads, self.hd).transpose(1, 2), angles)
        k, v = self.kv(x).view(B, N, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        k = apply_rope(k, angles)
        if cache is not None:  # decoding: extend this layer's keys/values
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), 2), torch.cat((cache["v"], v), 2)
            cache["k"], cache["v"] = k, v
        rep = self.heads // self.kv_heads
        o = self.core(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int):
        super().__init__()
        self.n1, self.n2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = _Attention(dim, heads, kv_heads)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, angles, mask, cache=None):
        x = x + self.attn(self.n1(x), angles, mask, cache)
        g, u = self.gate_up(self.n2(x)).chunk(2, -1)
        return x + self.down(F.silu(g) * u)


def _angles(pos: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """RoPE angles (B, 1, N, head_dim/2) for positions (B, N, 3)."""
    B, N, _ = pos.shape
    return rope_angles(pos.reshape(-1, 3), head_dim, theta).view(B, 1, N, -1)


class VisionTower(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg
        self.grid = (c.frames // c.temporal_patch, c.height // c.patch, c.width // c.patch)
        cin = c.stem_channels or 3
        # optional conv stem at full resolution (circular padding: the shapes world is a torus)
        self.stem = nn.Sequential(nn.Conv3d(3, cin, 3, padding=1, padding_mode="circular"), nn.GELU()) if c.stem_channels else None
        self.embed = nn.Linear(cin * c.temporal_patch * c.patch * c.patch, c.vision_dim)
        self.blocks = nn.ModuleList(_Block(c.vision_dim, c.vision_heads, c.vision_heads, 2 * c.vision_dim) for _ in range(c.vision_depth))
        self.norm = RMSNorm(c.vision_dim)
        self.merger = nn.Sequential(nn.Linear(c.merge * c.merge * c.vision_dim, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
        self.register_buffer("pos", token_positions(*self.grid), persistent=False)

    def forward(self, videos: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """(B, F, 3, H, W) in [0, 1] -> (B, tokens, dim) with tokens = T' * (H'/m) * (W'/m).

        With ``cache`` (``causal_time`` only) the frames are the next ones of a stream, whole temporal patches:
        their tokens attend to the stream's earlier tokens, kept in ``cache`` with the frames the stem's next
        window needs; chunk by chunk this equals encoding the frames seen so far at once."""
        c, (T, Hp, Wp) = self.cfg, self.grid
        B, Fr = videos.shape[:2]
        if cache is not None and not c.causal_time:
            raise ValueError("streaming encoding needs a vision tower causal in time (causal_time)")
        if Fr % c.temporal_patch:
            raise ValueError(f"{Fr} frames: a chunk must hold whole temporal patches of {c.temporal_patch} frames")
        t0, n = (cache or {}).get("patches", 0), Fr // c.temporal_patch
        if t0 + n > T:
            raise ValueError(f"{(t0 + n) * c.temporal_patch} frames: the vision tower reads at most {c.frames}")
        x = self._stem(videos * 2 - 1, cache)
        x = x.reshape(B, n, c.temporal_patch, x.shape[2], Hp, c.patch, Wp, c.patch)
        x = x.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(B, n * Hp * Wp, -1)
        x = self.embed(x)
        per = Hp * Wp
        angles = rope_angles(self.pos[t0 * per : (t0 + n) * per], c.vision_dim // c.vision_heads, c.rope_theta)
        mask = None
        if c.causal_time and n > 1:  # each new patch sees the ones before it (a single new patch sees every key)
            if t0 == 0:
                mask = BlockCausal(per)
            else:  # after a cached prefix: queries of patches t0.., keys of patches 0..
                q_blk = torch.arange(t0, t0 + n, device=x.device).repeat_interleave(per)
                mask = torch.arange((t0 + n) * per, device=x.device) // per <= q_blk[:, None]
        blocks = None if cache is None else cache.setdefault("blocks", [{} for _ in self.blocks])
        for i, blk in enumerate(self.blocks):
            x = blk(x, angles, mask, None if blocks is None else blocks[i])
        if cache is not None:
            cache["patches"] = t0 + n
        x = self.norm(x).view(B, n, Hp // c.merge, c.merge, Wp // c.merge, c.merge, -1)
        x = x.permute(0, 1, 2, 4, 3, 5, 6).reshape(B, n * (Hp // c.merge) * (Wp // c.merge), -1)
        return self.merger(x)

    def _stem(self, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
        """The conv stem on (B, F, 3, H, W) in [-1, 1]: circular in time and space, or (``causal_time``) with
        the two frames before the chunk in front of it — zeros at the start, the stream's last frames after."""
        if self.stem is None:
            return x
        if not self.cfg.causal_time:
            return self.stem(x.transpose(1, 2)).transpose(1, 2)
        conv = self.stem[0]
        past = (cache or {}).get("frames")
        front = past if past is not None else x.new_zeros(x.shape[0], 2, *x.shape[2:])
        window = torch.cat((front, x), 1)
        if cache is not None:
            cache["frames"] = window[:, -2:]
        y = F.pad(window.transpose(1, 2), (1, 1, 1, 1, 0, 0), mode="circular")
        return self.stem[1](F.conv3d(y, conv.weight, conv.bias)).transpose(1, 2)


class CompletionPolicy(nn.Module):
    """What every genrl policy derives from its ``logits``: per-token log-probabilities of completions."""

    SHARD_METHODS = ("encode_video", "generate", "logits")
    """The methods genrl calls on a policy (none calls another): a sharded policy gathers its root weights
    for each (:func:`genrl.parallel.shard`)."""

    def token_logprobs(self, video_emb, prompt_ids, prompt_mask, completion_ids, completion_mask, return_logits=False,
                       temperature: float = 1.0):
        """log pi(token) (B, T) of each completion token under the sampling distribution at ``temperature``
        (logits / T, as the tokens were drawn); with ``return_logits`` also those scaled logits."""
        logits = self.logits(video_emb, prompt_ids, prompt_mask, completion_ids, completion_mask)
        lp, logits = completion_logprobs(logits, completion_ids, temperature)
        return (lp, logits) if return_logits else lp


def completion_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi of each token of ``ids`` (B, T) under ``logits`` (B, T, vocab) at ``temperature``, in float32, and
    the float32 logits / T they come from."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return torch.gather(logits.log_softmax(-1), 2, ids[..., None]).squeeze(-1), logits


def sample_completions(logits: torch.Tensor, step, max_new_tokens: int, temperature: float,
                       generator: torch.Generator | None, eos: int, pad: int,
                       together: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoding loop: sample from ``logits`` (B, vocab) (greedy at temperature 0), feed the token to
    ``step(tok) -> next logits`` (a KV-cache pass), until every row has emitted ``eos`` or ``max_new_tokens``.
    Returns ids (B, T) and mask (B, T); tokens after a row's ``eos`` are ``pad``, masked. Sampling draws on
    the CPU so one CPU generator seeds it on any device.

    ``together`` (a sharded policy, whose every pass gathers weights from all processes): each process runs
    ``step`` until every process's rows are done, feeding ``pad`` once its own are; it draws no more samples
    then and returns what it would have alone."""
    B, dev = logits.shape[0], logits.device
    toks, live, done = [], [], torch.zeros(B, dtype=torch.bool, device=dev)
    length = None  # tokens this process needed, once its rows are done
    for k in range(max_new_tokens):
        if length is not None:
            tok = torch.full((B,), pad, dtype=torch.long, device=dev)
        elif temperature > 0:
            probs = (logits.float() / temperature).softmax(-1)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(dev)
        else:
            tok = logits.argmax(-1)
        if length is None:
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            toks.append(tok)
            live.append(~done)
            done = done | (tok == eos)
            if bool(done.all()):
                length = k + 1
        finished = length is not None if not together else not _any_live(length is None, dev)
        if finished or k == max_new_tokens - 1:
            break
        logits = step(tok)
    return torch.stack(toks, 1), torch.stack(live, 1)


def _any_live(live: bool, device: torch.device) -> bool:
    """Whether any process of the launch still samples (every process asks at every token, or none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return live
    flag = torch.tensor([float(live)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class TinyVLM(CompletionPolicy):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        if cfg.frames % cfg.temporal_patch or cfg.height % (cfg.patch * cfg.merge) or cfg.width % (cfg.patch * cfg.merge):
            raise ValueError("frames must divide by temporal_patch, height and width by patch * merge")
        self.cfg = cfg
        self.tokenizer = WordTokenizer(cfg.words)
        self.visual = VisionTower(cfg)
        self.embed = nn.Embedding(len(self.tokenizer), cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.kv_heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.dim)
        T, Hp, Wp = self.visual.grid
        grid = token_positions(T, Hp // cfg.merge, Wp // cfg.merge) + 1
        self.register_buffer("video_pos", grid, persistent=False)
        self.text_start = int(grid.max()) + 1  # position of <vision_end>; text continues from there
        self.apply(_init)

    def add_words(self, words: list[str]) -> list[str]:
        """Grow the vocabulary by the ``words`` it lacks (a task that asks new words); returns those added.

        Existing ids and embedding rows stay as they are; each new row starts at the mean of the existing
        rows (the output head is tied to the embedding, so it gains matching columns). The words go into
        ``cfg.words``, so saved weights reload with the grown vocabulary."""
        new = [w for w in dict.fromkeys(words) if w not in self.tokenizer.ids]
        if not new:
            return []
        old = self.embed.weight.data
        grown = nn.Embedding(old.shape[0] + len(new), old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            grown.weight[: old.shape[0]] = old
            grown.weight[old.shape[0] :] = old.mean(0)
        grown.weight.requires_grad_(self.embed.weight.requires_grad)
        self.embed = grown
        self.cfg.words = [*self.cfg.words, *new]
        self.tokenizer = WordTokenizer(self.cfg.words)
        return new

    @property
    def video_tokens(self) -> int:
        return self.video_pos.shape[0]

    @property
    def video_dim(self) -> int:
        """Width of the video embeddings :meth:`encode_video` returns."""
        return self.cfg.dim

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """The vision tower: (B, F, 3, H, W) in [0, 1] -> video embeddings (B, tokens, dim)."""
        emb = self.visual(videos)
        return emb.clone() if is_sharded(self) else emb  # a sharded policy's output gets a hook: not on a view

    # ----------------------------------------------------------------- internals
    def _positions(self, real: torch.Tensor) -> torch.Tensor:
        """M-RoPE positions (B, L, 3) from the mask of real tokens: pads do not advance them."""
        p = (real.long().cumsum(1) - 1).clamp_min(0)
        V = self.video_tokens
        vid = self.video_pos[(p - 1).clamp(0, V - 1)]
        text = (self.text_start + p - V - 1)[..., None].expand(*p.shape, 3)
        pos = torch.where((p <= V)[..., None], vid, text)
        return torch.where((p == 0)[..., None], torch.zeros_like(pos), pos)

    def _embed_prefix(self, video_emb, prompt_ids):
        B = prompt_ids.shape[0]
        special = self.embed(torch.tensor([VSTART, VEND], device=prompt_ids.device))
        return torch.cat((special[0].expand(B, 1, -1), video_emb, special[1].expand(B, 1, -1), self.embed(prompt_ids)), 1)

    def _forward(self, x, real, caches=None, past_real=None, positions=None):
        """Embeddings -> logits: a full causal pass with pads masked (filling ``caches`` when given),
        or, with ``past_real``, the next tokens against ``caches`` (causal among themselves). ``positions``
        (B, N, 3) replaces the M-RoPE positions of the one-video layout (streams interleave video and text)."""
        hd = self.cfg.dim // self.cfg.heads
        if past_real is None:
            L = x.shape[1]
            if bool(real.all()):  # no padding: the kernels' causal mode, no (L, L) mask built or kept
                mask = BlockCausal(1)
            else:
                mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()[None, None] & real[:, None, None, :]
            pos = self._positions(real) if positions is None else positions
        else:
            keys = torch.cat((past_real, real), 1)
            mask = keys[:, None, None, :]
            if x.shape[1] > 1:
                n, P = x.shape[1], past_real.shape[1]
                mask = mask & torch.ones(n, P + n, dtype=torch.bool, device=x.device).tril(P)[None, None]
            pos = self._positions(keys)[:, -x.shape[1]:] if positions is None else positions
        return self.norm(self._run_blocks(x, _angles(pos, hd, self.cfg.rope_theta), mask, caches)) @ self.embed.weight.T

    def _run_blocks(self, x, angles, mask, caches=None):
        for i, blk in enumerate(self.blocks):
            x = blk(x, angles, mask, None if caches is None else caches[i])
        return x

    # ---------------------------------------------------------------- primitives
    def logits(self, video_emb, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """Logits (B, T, vocab) predicting each completion token (teacher forcing)."""
        x = torch.cat((self._embed_prefix(video_emb, prompt_ids), self.embed(completion_ids)), 1)
        B, V = prompt_ids.shape[0], video_emb.shape[1]
        ones = torch.ones(B, V + 2, dtype=torch.bool, device=x.device)
        real = torch.cat((ones, prompt_mask, completion_mask), 1)
        T = completion_ids.shape[1]
        logits = self._forward(x, real)[:, -T - 1 : -1]
        return logits.clone() if is_sharded(self) else logits  # a sharded policy's output gets a hook: not on a view

    @torch.no_grad()
    def generate(self, video_emb, prompt_ids, prompt_mask, max_new_tokens: int = 8, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample completions with a KV cache (greedy at temperature 0). Returns ids (B, T) and mask (B, T);
        a completion ends with (and includes) <eos>; later positions are <pad>, masked."""
        B, V = prompt_ids.shape[0], video_emb.shape[1]
        x = self._embed_prefix(video_emb, prompt_ids)
        real = torch.cat((torch.ones(B, V + 2, dtype=torch.bool, device=x.device), prompt_mask), 1)
        caches = [{} for _ in self.blocks]
        logits = self._forward(x, real, caches)[:, -1]
        real = [real]

        def step(tok: torch.Tensor) -> torch.Tensor:
            one = torch.ones(B, 1, dtype=torch.bool, device=x.device)
            out = self._forward(self.embed(tok)[:, None], one, caches, real[0])[:, -1]
            real[0] = torch.cat((real[0], one), 1)
            return out

        return sample_completions(logits, step, max_new_tokens, temperature, generator, EOS, PAD, is_sharded(self))


def _init(m: nn.Module) -> None:
    """Small initial weights (GPT-2's 0.02): tied logits start near uniform."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
