"""VST, thinking while watching: streaming video QA on the shapes world.

A clip arrives ``chunk_frames`` frames at a time. After each chunk the model writes a short thought into
its KV cache — every shape on screen in that chunk, fully described (the question has not come yet), as
grounded clues,
``<think> <time> 2 3 </time> <caption> small red circle left slowly </caption> </think>`` — and a question
may come after any chunk. The answer is decoded from the cache: the reasoning was done while the video
played, so answering costs the question and a few answer tokens, not a fresh look at the clip and a
chain of thought. The vision tower must be causal in time (``VLMConfig.causal_time``): a chunk's tokens
never see later frames, so the stream's encoding equals the encoding of the frames seen so far.

The sequence of a stream asked after k chunks (the SFT target is every thought, the answer and <eos>)::

    <vision_start> chunk_1 <vision_end> thought_1 ... <vision_start> chunk_k <vision_end> thought_k question answer

Positions follow Qwen2-VL's rule for interleaved media: a text token at (p, p, p), a chunk at p plus its
(time, row, col) offsets, the text after it from p plus the largest offset plus one. :func:`stream_batch`
lays a batch out at once for training; :class:`Stream` grows the same layout token by token for answering,
and the two give the same logits (``tests/test_vst.py``).

Questions are about what has been seen so far: a ``when`` answer is the shape's span clipped to the frames
seen, asked only once the shape has appeared; the other types' answers hold from the first chunk on (the
``order`` question's first shape is the one seen first).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import check
from ..models.dit import token_positions
from ..models.vlm import EOS, PAD, VEND, VSTART, TinyVLM
from ..worlds.qa import CAPTION, TIME, QAConfig, QAItem, ShapesQA, clue_text
from .qa import MAX_NEW_TOKENS, answer_reward, prompts, target_text

THINK_TOKENS = 40
"""Longest thought decoded after a chunk (three shapes' clues with their tags take 29)."""
ANSWER_TOKENS = 8


@dataclass
class StreamConfig:
    """Streaming QA (the VST recipe): chunked clips, a thought after each chunk, a question after any."""

    enabled: bool = False
    """Train on streams (the vision tower is made causal in time) instead of whole clips."""
    chunk_frames: int = check(2, ">=1")
    """Frames per chunk (whole temporal patches of the vision tower, dividing the clip's frames)."""
    thoughts: bool = True
    """Write the chunk's clues as its thought; False: every thought is empty (``<think> </think>``), the
    ablation that answers from the video tokens alone."""


# ------------------------------------------------------------------------------------------------ the data
def thought_text(item: QAItem, first: int, last: int, thoughts: bool = True) -> str:
    """The thought after the chunk of frames ``first..last``: each shape of ``item.scene`` on screen in it, fully
    described, with the frames of the chunk it is on screen for. It depends on the clip alone — the question
    comes later."""
    if not thoughts:
        return "<think> </think>"
    body = clue_text([(max(a, first), min(b, last), c) for a, b, c in item.scene if a <= last and b >= first])
    return f"<think> {body} </think>" if body else "<think> </think>"


def first_chunk(item: QAItem, chunk_frames: int) -> int:
    """How many chunks must be seen before ``item`` can be asked (``when``: until the shape has appeared)."""
    return item.span[0] // chunk_frames + 1 if item.qtype == "when" else 1


def seen_item(item: QAItem, frames_seen: int) -> QAItem:
    """``item`` as asked after ``frames_seen`` frames: a ``when`` span ends at the last frame seen."""
    if item.qtype != "when":
        return item
    a, b = item.span
    answer = f"{a} {min(b, frames_seen - 1)}"
    return dataclasses.replace(item, answer=answer, value=answer, span=(a, min(b, frames_seen - 1)))


def answer_text(item: QAItem) -> str:
    return target_text(item).split("</think>", 1)[1].strip()


def vocabulary_words() -> list[str]:
    """Words a stream's thoughts use besides the QA vocabulary's."""
    return [*TIME, *CAPTION]


# ------------------------------------------------------------------------------------------------ layout
def chunk_offsets(model: TinyVLM, patches: int, device=None) -> torch.Tensor:
    """(time, row, col) offsets (tokens, 3) of a chunk of ``patches`` temporal patches' tokens."""
    _, Hp, Wp = model.visual.grid
    m = model.cfg.merge
    return token_positions(patches, Hp // m, Wp // m, device=device)


def stream_batch(model: TinyVLM, emb: torch.Tensor, items: list[QAItem], asks: list[int], chunk_frames: int,
                 thoughts: bool = True):
    """Teacher-forced streams: ``emb`` (B, tokens, dim) the causal tower's whole-clip embeddings, row i asked
    after ``asks[i]`` chunks. Returns embeddings (B, L, dim), real mask (B, L), positions (B, L, 3) and targets
    (B, L): the next token where it is a thought, answer or <eos> token, -100 elsewhere (right-padded rows)."""
    tok, dev = model.tokenizer, emb.device
    patches = chunk_frames // model.cfg.temporal_patch
    offsets = chunk_offsets(model, patches, dev)
    per, span = offsets.shape[0], int(offsets.max()) + 1
    rows = []
    for i, (item, k) in enumerate(zip(items, asks)):
        pieces, pos, ids, learn = [], [], [], []  # ids: token id per position (-1 for video), learn: is a target
        p = 0

        def text(words: list[int], target: bool):
            nonlocal p
            pieces.append(model.embed(torch.tensor(words, device=dev)))
            pos.append(torch.arange(p, p + len(words), device=dev)[:, None].expand(-1, 3))
            ids.extend(words)
            learn.extend([target] * len(words))
            p += len(words)

        for c in range(k):
            text([VSTART], False)
            pieces.append(emb[i, c * per : (c + 1) * per])
            pos.append(p + offsets)
            ids.extend([-1] * per)
            learn.extend([False] * per)
            p += span
            text([VEND], False)
            text(tok.encode(thought_text(item, c * chunk_frames, (c + 1) * chunk_frames - 1, thoughts)), True)
        asked = seen_item(item, k * chunk_frames)
        text(tok.encode(asked.prompt()), False)
        text(tok.encode(answer_text(asked)) + [tok.eos_id], True)
        rows.append((torch.cat(pieces), torch.cat(pos), ids, learn))
    L = max(len(r[2]) for r in rows)
    B, D = len(rows), emb.shape[-1]
    x = emb.new_zeros(B, L, D)
    real = torch.zeros(B, L, dtype=torch.bool, device=dev)
    positions = torch.zeros(B, L, 3, dtype=torch.long, device=dev)
    targets = torch.full((B, L), -100, dtype=torch.long, device=dev)
    for i, (e, ps, ids, learn) in enumerate(rows):
        n = len(ids)
        x[i, :n], real[i, :n], positions[i, :n] = e, True, ps
        nxt = torch.tensor([t if lrn else -100 for t, lrn in zip(ids[1:], learn[1:])], dtype=torch.long, device=dev)
        targets[i, : n - 1] = nxt
    return x, real, positions, targets


def stream_loss(model: TinyVLM, emb: torch.Tensor, items: list[QAItem], asks: list[int], chunk_frames: int,
                thoughts: bool = True) -> torch.Tensor:
    """Cross-entropy over the thoughts, answers and <eos> of teacher-forced streams (``emb``: the causal
    tower's embeddings of the whole clips)."""
    x, real, pos, tgt = stream_batch(model, emb, items, asks, chunk_frames, thoughts)
    logits = model._forward(x, real, positions=pos)
    keep = tgt >= 0
    return F.cross_entropy(logits[keep].float(), tgt[keep])


def draw_asks(items: list[QAItem], frames: int, chunk_frames: int, generator: torch.Generator) -> list[int]:
    """After how many chunks each item is asked, uniform over the chunks where it can be."""
    chunks = frames // chunk_frames
    out = []
    for it in items:
        lo = first_chunk(it, chunk_frames)
        out.append(lo + int(torch.randint(chunks - lo + 1, (1,), generator=generator)))
    return out


# ------------------------------------------------------------------------------------------------ streaming
class Stream:
    """A batch of live streams: the language model's KV cache, the vision tower's, which cached keys are real,
    and each row's next position. :meth:`fork` branches it (a question asked now, the stream going on)."""

    def __init__(self, model: TinyVLM, batch: int, device=None):
        if not model.cfg.causal_time:
            raise ValueError("a stream needs a vision tower causal in time (a model trained with sft.stream)")
        self.model, self.B = model, batch
        self.device = device if device is not None else next(model.parameters()).device
        self.caches: list[dict] = [{} for _ in model.blocks]
        self.vision: dict = {}
        self.real = torch.zeros(batch, 0, dtype=torch.bool, device=self.device)
        self.next = torch.zeros(batch, dtype=torch.long, device=self.device)

    def fork(self) -> Stream:
        """A branch sharing the past: appending to it leaves this stream as it was (caches grow by concatenation)."""
        other = object.__new__(Stream)
        other.__dict__.update(self.__dict__)
        other.caches = [dict(c) for c in self.caches]
        other.vision = {**self.vision, "blocks": [dict(c) for c in self.vision.get("blocks", [])]}
        return other

    def _append(self, x: torch.Tensor, real: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        logits = self.model._forward(x, real, self.caches, self.real, positions=pos)
        self.real = torch.cat((self.real, real), 1)
        return logits

    def add_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append tokens (B, n) (``mask`` False: pads, which neither attend nor move positions); returns their
        logits (B, n, vocab). Pad questions on the left so the last position is real."""
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        pos = (self.next[:, None] + mask.long().cumsum(1) - 1).clamp_min(0)
        self.next = self.next + mask.long().sum(1)
        return self._append(self.model.embed(ids), mask, pos[..., None].expand(-1, -1, 3))

    def add_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Append a chunk (B, f, 3, H, W) in [0, 1] between <vision_start> and <vision_end>; returns the logits
        after <vision_end> (B, vocab): the start of the chunk's thought."""
        m = self.model
        emb = m.visual(frames, self.vision)
        offsets = chunk_offsets(m, frames.shape[1] // m.cfg.temporal_patch, self.device)
        special = m.embed(torch.tensor([VSTART, VEND], device=self.device))
        x = torch.cat((special[0].expand(self.B, 1, -1), emb, special[1].expand(self.B, 1, -1)), 1)
        p = self.next[:, None, None]
        span = int(offsets.max()) + 1
        pos = torch.cat((p.expand(-1, 1, 3), p + 1 + offsets[None], (p + 1 + span).expand(-1, 1, 3)), 1)
        self.next = self.next + span + 2
        real = torch.ones(self.B, x.shape[1], dtype=torch.bool, device=self.device)
        return self._append(x, real, pos)[:, -1]

    def decode(self, logits: torch.Tensor, stop: int, max_tokens: int) -> torch.Tensor:
        """Greedy tokens from ``logits`` (B, vocab) until each row emits ``stop``; every emitted token (the stop
        included) joins the cache, a finished row's later steps are pads. Returns ids (B, T), pads after stop."""
        done = torch.zeros(self.B, dtype=torch.bool, device=self.device)
        out = []
        for _ in range(max_tokens):
            tok = torch.where(done, torch.full_like(done, PAD, dtype=torch.long), logits.argmax(-1))
            out.append(tok)
            logits = self.add_text(tok[:, None], ~done[:, None])[:, -1]
            done = done | (tok == stop)
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    def watch(self, frames: torch.Tensor) -> torch.Tensor:
        """Take in the next chunk and write its thought (greedy, up to ``</think>``); returns the thought ids."""
        return self.decode(self.add_video(frames), self.model.tokenizer.ids["</think>"], THINK_TOKENS)

    def ask(self, items: list[QAItem]) -> torch.Tensor:
        """Answer ``items`` now, on a fork (the stream goes on as if not asked); returns the answer ids."""
        branch = self.fork()
        ids, mask = prompts(self.model, items, self.device)
        return branch.decode(branch.add_text(ids, mask)[:, -1], EOS, ANSWER_TOKENS)


# ------------------------------------------------------------------------------------------------ evaluation
def _whole_clip_answer(model, videos: torch.Tensor, items: list[QAItem]) -> torch.Tensor:
    """A whole-clip model's greedy completion (its reasoning, then the answer) to ``items`` about ``videos``."""
    ids, mask = prompts(model, items, videos.device)
    return model.generate(model.encode_video(videos), ids, mask, max_new_tokens=MAX_NEW_TOKENS, temperature=0)[0]


@torch.no_grad()
def evaluate_stream(model: TinyVLM, split: str = "test", num: int = 256, batch: int = 64, qa: ShapesQA | None = None,
                    chunk_frames: int = 2, latency_num: int = 32, quiet: bool = True) -> dict:
    """Streaming QA: each of ``num`` items asked after every chunk from the first where it can be. A streaming
    model (``causal_time``) watches chunk by chunk, thinking after each, and answers from its cache; any other
    model is shown the frames seen so far (later frames blank) and answers as it was trained (reasoning after
    the question). Accuracy by frames seen and per question type, and the latency of one answer (batch 1,
    ``latency_num`` questions after the last chunk: what a viewer waits once the question is asked)."""
    from ..progress import progress_bar

    qa = qa or ShapesQA(stream_qa_config(model))
    F_ = qa.cfg.frames
    if F_ % chunk_frames or chunk_frames % model.cfg.temporal_patch:
        raise ValueError(f"chunk_frames {chunk_frames}: must divide the {F_} frames and hold whole temporal patches "
                         f"of {model.cfg.temporal_patch}")
    chunks = F_ // chunk_frames
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    streaming = bool(model.cfg.causal_time)
    per_item: dict[str, list] = {"type": [], "qtype": [], "frames": [], "reward": [], "item": []}
    think_tokens: list[float] = []
    t0 = time.time()
    with progress_bar(num, "eval stream", quiet) as advance:
        for s in range(0, num, batch):
            idx = list(range(s, min(num, s + batch)))
            videos, items = qa.items(split, idx)
            videos = videos.to(dev)
            answers = (_stream_answers if streaming else _offline_answers)(model, videos, items, chunk_frames, think_tokens)
            for k in range(1, chunks + 1):
                for j, (it, text) in enumerate(zip(items, answers[k])):
                    if text is None:
                        continue
                    per_item["type"].append(f"frames={k * chunk_frames}")
                    per_item["qtype"].append(it.qtype)
                    per_item["frames"].append(k * chunk_frames)
                    per_item["reward"].append(answer_reward(text, seen_item(it, k * chunk_frames)))
                    per_item["item"].append(idx[j])
            advance(len(items), f"acc={sum(per_item['reward']) / len(per_item['reward']):.3f}")
    latency = _latency(model, qa, split, min(latency_num, num), chunk_frames, dev) if latency_num else {}
    model.train(was_training)
    by_frames: dict[int, list[float]] = {}
    by_type: dict[str, dict[int, list[float]]] = {}
    for r, f, q in zip(per_item["reward"], per_item["frames"], per_item["qtype"]):
        by_frames.setdefault(f, []).append(r)
        by_type.setdefault(q, {}).setdefault(f, []).append(r)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {
        "task": "stream",
        "streaming": streaming,
        "accuracy": mean(per_item["reward"]),
        "accuracy_by_frames": {str(f): mean(v) for f, v in sorted(by_frames.items())},
        "per_type_by_frames": {q: {str(f): mean(v) for f, v in sorted(d.items())} for q, d in sorted(by_type.items())},
        "think_tokens_per_chunk": mean(think_tokens) if think_tokens else 0.0,
        **latency,
        "num": num,
        "split": split,
        "chunk_frames": chunk_frames,
        "hallucination": qa.cfg.hallucination,
        "background": qa.cfg.background,
        "types": list(qa.cfg.types),
        "per_item": per_item,
        "seconds": round(time.time() - t0, 2),
    }


def _stream_answers(model: TinyVLM, videos: torch.Tensor, items: list[QAItem], chunk_frames: int,
                    think_tokens: list[float] | None = None) -> dict[int, list[str | None]]:
    """Watch ``videos`` chunk by chunk, thinking after each; after chunk k answer each item that can be asked."""
    tok = model.tokenizer
    stream = Stream(model, len(items), videos.device)
    out: dict[int, list[str | None]] = {}
    for k in range(1, videos.shape[1] // chunk_frames + 1):
        thought = stream.watch(videos[:, (k - 1) * chunk_frames : k * chunk_frames])
        if think_tokens is not None:
            think_tokens.append(float((thought != PAD).sum(1).float().mean()))
        ans = stream.ask([seen_item(it, k * chunk_frames) for it in items])
        out[k] = [tok.decode(row) if k >= first_chunk(it, chunk_frames) else None for it, row in zip(items, ans)]
    return out


def _offline_answers(model, videos: torch.Tensor, items: list[QAItem], chunk_frames: int,
                     think_tokens: list[float] | None = None) -> dict[int, list[str | None]]:
    """A whole-clip model: after chunk k it is shown the frames seen (the rest blank) and answers as trained."""
    tok = model.tokenizer
    out: dict[int, list[str | None]] = {}
    for k in range(1, videos.shape[1] // chunk_frames + 1):
        seen = videos.clone()
        seen[:, k * chunk_frames :] = 0
        ans = _whole_clip_answer(model, seen, [seen_item(it, k * chunk_frames) for it in items])
        out[k] = [tok.decode(row) if k >= first_chunk(it, chunk_frames) else None for it, row in zip(items, ans)]
    return out


def _latency(model: TinyVLM, qa: ShapesQA, split: str, n: int, chunk_frames: int, dev) -> dict[str, float]:
    """Median wall time of one answer asked after the last chunk (batch 1): for a streaming model the question
    and the answer decoded from its cache (the thoughts were written while watching; their time per chunk is
    reported apart); for a whole-clip model encoding the clip, reading the question and its reasoned answer."""
    answer_ms, think_ms, answer_tokens = [], [], []
    for i in range(n):
        video, items = qa.items(split, [i])
        video = video.to(dev)
        asked = [seen_item(items[0], qa.cfg.frames)]
        if model.cfg.causal_time:
            stream = Stream(model, 1, dev)
            for k in range(qa.cfg.frames // chunk_frames):
                t = time.perf_counter()
                stream.watch(video[:, k * chunk_frames : (k + 1) * chunk_frames])
                think_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            ans = stream.ask(asked)
        else:
            t = time.perf_counter()
            ans = _whole_clip_answer(model, video, asked)
        answer_ms.append(1000 * (time.perf_counter() - t))
        answer_tokens.append(float((ans != PAD).sum()))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    out = {"answer_latency_ms": round(med(answer_ms), 2), "answer_tokens": sum(answer_tokens) / len(answer_tokens),
           "latency_num": n}
    if think_ms:
        out["think_ms_per_chunk"] = round(med(think_ms), 2)
    return out


def stream_summary(report: dict) -> str:
    """One line: accuracy by frames seen, and what an answer costs once asked."""
    by = " ".join(f"{f}f={v:.3f}" for f, v in report["accuracy_by_frames"].items())
    line = f"accuracy={report['accuracy']:.4f} by frames seen: {by}"
    if "answer_latency_ms" in report:
        line += f"; answer latency {report['answer_latency_ms']:.1f} ms ({report['answer_tokens']:.1f} tokens after the question)"
    if "think_ms_per_chunk" in report:
        line += f", thinking {report['think_ms_per_chunk']:.1f} ms per chunk while watching"
    return line


def stream_qa_config(model: TinyVLM, types: list[str] | None = None) -> QAConfig:
    """The streaming benchmark's questions for ``model``'s clips: the usual seven types and ``when``."""
    from .qa import _qa_config_for

    cfg = _qa_config_for(model, types=types or list(STREAM_TYPES))
    return dataclasses.replace(cfg, thinker=False)


STREAM_TYPES = ("colour", "shape", "size", "direction", "speed", "count", "order", "when")
"""The streaming benchmark's question types; ``when`` answers change as the clip goes on."""
