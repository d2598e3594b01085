"""What SFT and GRPO on video QA share: model sizes, prompts, targets, rewards, evaluation."""

from __future__ import annotations

import dataclasses
import re
import time

import torch

from ..models.vlm import TinyVLM, VLMConfig, pad_batch
from ..worlds.qa import LETTERS, NONE, NUMERIC_TYPES, TIME, QAConfig, QAItem, ShapesQA, clue_text, vocabulary
from ..worlds.shapes import VALUES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_NEW_TOKENS = 12  # the longest SFT completion is 11 tokens with <eos>
BOX_TOKENS = 14  # a ``where`` completion: five reason words, four box numbers, the tags and <eos>
THINKER_TOKENS = 30  # a Video-Thinker count of three shapes: three 8-token clues, the tags, the answer and <eos>


def completion_tokens(qa: QAConfig) -> int:
    """The longest completion ``qa``'s questions need (``where`` boxes take three tokens more, Video-Thinker traces
    up to 30)."""
    if qa.thinker:
        return THINKER_TOKENS
    return BOX_TOKENS if "where" in qa.types else MAX_NEW_TOKENS

VLM_SIZES = {
    "debug": dict(vision_dim=32, vision_depth=1, vision_heads=2, dim=32, depth=1, heads=2, kv_heads=1, mlp_hidden=64),
    "shapes": dict(stem_channels=24, vision_dim=96, vision_depth=4, vision_heads=4, dim=96, depth=3, heads=4, kv_heads=2,
                   mlp_hidden=256),
}


def load_policy(name_or_path: str, qa: QAConfig | None = None, dtype: str = "float32"):
    """A video-language policy: genrl VLM weights (built-in name, .safetensors, run folder) or a local
    transformers Qwen2-VL / Qwen2.5-VL folder (also a run folder whose model/ holds one), fed ``qa``'s clips."""
    from pathlib import Path

    from ..models.hf_vlm import QwenVLPolicy, is_hf_folder
    from ..models.registry import load_model

    path = Path(name_or_path)
    if is_hf_folder(path / "model"):
        path = path / "model"
    if not is_hf_folder(path):
        return load_model(name_or_path, "vlm")
    if dtype not in DTYPES:
        raise ValueError(f"policy dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    qa = qa or QAConfig()
    return QwenVLPolicy.from_pretrained(path, dtype=DTYPES[dtype], frames=qa.frames, height=qa.world.height,
                                        width=qa.world.width)


def save_policy(policy, run_dir, weights: dict | None = None):
    """A trained policy into ``run_dir``, as :func:`load_policy` reads it back: a transformers folder model/ (it
    loads with from_pretrained too) or model.safetensors. ``weights``: its whole state dict, when it is sharded."""
    from pathlib import Path

    from ..models.hf_vlm import QwenVLPolicy
    from ..models.registry import save_weights

    if isinstance(policy, QwenVLPolicy):
        return policy.save_pretrained(Path(run_dir) / "model", weights)
    return save_weights(policy, Path(run_dir) / "model.safetensors", "vlm", policy.cfg, weights=weights)


def build_vlm(size: str, qa: ShapesQA) -> TinyVLM:
    """A fresh tiny VLM of a registered size, its tokenizer built from the QA vocabulary."""
    if size not in VLM_SIZES:
        raise ValueError(f"unknown VLM size {size!r}; valid: {', '.join(VLM_SIZES)}")
    w = qa.cfg.world
    return TinyVLM(VLMConfig(words=vocabulary(qa.cfg), frames=qa.cfg.frames, height=w.height, width=w.width,
                             **VLM_SIZES[size]))


def fit_vocabulary(policy, qa: QAConfig):
    """Give a tiny VLM the words ``qa`` asks that it lacks (e.g. "none of these" for hallucination questions).
    A transformers policy's own tokenizer reads any text."""
    if isinstance(policy, TinyVLM):
        policy.add_words(vocabulary(qa))
    return policy


ATTRIBUTE_WORDS = frozenset(w for k in ("colour", "shape", "size", "direction", "speed") for w in VALUES[k])
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # as the task rewards read it (genrl does not import them)


def verify(text: str, item: QAItem) -> float:
    """VerIPO's rollout-aware verifier, by rule on the shapes world: 1 when the think block claims at least one
    attribute (colour, kind, size, direction, speed words), every claim is true of the clip (among the words of
    ``item.reason``), and the answer agrees with the claims — a chosen option's value is claimed, a count equals
    the number of shape kinds described; else 0. It judges the reasoning, not whether the answer is right."""
    m = _THINK.search(text)
    claims = [w for w in (m.group(1).split() if m else []) if w in ATTRIBUTE_WORDS]
    truth = set(item.reason.split())
    if not claims or any(w not in truth for w in claims):
        return 0.0
    found = _ANSWER.search(text)
    answer = found.group(1).strip() if found else ""
    if item.qtype == "count":
        return float(answer == str(sum(w in VALUES["shape"] for w in claims)))
    if not item.options:
        return 1.0  # progress and grounding answers are numbers the claims do not name
    letters = [c for c in answer.split() if len(c) == 1 and c in LETTERS[: len(item.options)]]
    if len(letters) != 1:
        return 0.0
    value = item.options[LETTERS.index(letters[0])]
    return float(value == NONE or all(w in claims for w in value.split()))


def target_text(item: QAItem) -> str:
    """The SFT completion: what the clip shows, then the answer, in the tags the format reward checks."""
    return f"<think> {item.reason} </think> <answer> {item.answer} </answer>"


def prompts(model: TinyVLM, items: list[QAItem], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = model.tokenizer.batch([it.prompt() for it in items], left_pad=True)
    return ids.to(device), mask.to(device)


def targets(model: TinyVLM, items: list[QAItem], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion ids (B, T) ending in the tokenizer's end token (right-padded) and their mask."""
    tok = model.tokenizer
    ids, mask = pad_batch([tok.encode(target_text(it)) + [tok.eos_id] for it in items], tok.pad_id, left_pad=False)
    return ids.to(device), mask.to(device)


def accuracy_reward_name(item: QAItem, soft: bool = True) -> str:
    """Which task reward scores an item's answer: counts are numeric, choices exact match, and
    several-letter (inverted) choices the soft multi-choice reward when ``soft``."""
    if item.qtype in NUMERIC_TYPES:
        return "numeric"
    if item.qtype == "progress":
        return "progress"  # 1 - |pred - truth| / 100: credit for being close (PRIMO's MAE reward)
    if item.qtype in ("when", "where"):
        return "frame_span" if item.qtype == "when" else "box_iou"  # IoU with the true span / box
    return "soft_choice" if soft and len(item.answer.split()) > 1 else "choice"


def answer_reward(text: str, item: QAItem) -> float:
    """The task reward of a completion's answer to ``item`` (accuracy, or IoU / closeness where dense)."""
    from ..registry import TASK_REWARDS

    return TASK_REWARDS.get(accuracy_reward_name(item))(text, item.answer)


@torch.no_grad()
def evaluate_qa(model: TinyVLM, split: str = "test", num: int = 256, batch: int = 64, qa: ShapesQA | None = None,
                quiet: bool = True, hallucination: float = 0.0, types: list[str] | None = None,
                background: float = -1.0) -> dict:
    """Greedy answers to ``num`` items of ``split``: accuracy overall and per question type (``hallucination``:
    the share of choice questions whose answer is "none of these", when ``qa`` is not given)."""
    from ..progress import progress_bar
    from ..registry import TASK_REWARDS

    qa = qa or ShapesQA(_qa_config_for(model, hallucination, types, background))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    hits: dict[str, list[float]] = {}
    fmt = []
    per_item: dict[str, list] = {"type": [], "reward": [], "consistent": [], "clues": []}  # question order: files pair
    t0 = time.time()
    with progress_bar(num, "eval qa", quiet) as advance:
        for s in range(0, num, batch):
            videos, items = qa.items(split, range(s, min(num, s + batch)))
            p_ids, p_mask = prompts(model, items, dev)
            ids, _ = model.generate(model.encode_video(videos.to(dev)), p_ids, p_mask, max_new_tokens=completion_tokens(qa.cfg),
                                     temperature=0)
            for it, row in zip(items, ids):
                text = model.tokenizer.decode(row)
                kind = "hallucination" if it.value == NONE else it.qtype  # "none of these" questions, apart
                hits.setdefault(kind, []).append(answer_reward(text, it))
                per_item["type"].append(kind)
                per_item["reward"].append(hits[kind][-1])
                per_item["consistent"].append(verify(text, it))
                per_item["clues"].append(TASK_REWARDS.get("clues")(text, clue_text(it.clues)))
                fmt.append(TASK_REWARDS.get("format")(text, ""))
            advance(len(items), f"acc={sum(sum(v) for v in hits.values()) / len(fmt):.3f}")
    model.train(was_training)
    total = [x for v in hits.values() for x in v]
    return {
        "accuracy": sum(total) / len(total),
        "per_type": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
        "format": sum(fmt) / len(fmt),
        "consistency": sum(per_item["consistent"]) / len(total),
        "clues": sum(per_item["clues"]) / len(total),
        "num": len(total),
        "split": split,
        "hallucination": qa.cfg.hallucination,
        "background": qa.cfg.background,
        "types": list(qa.cfg.types),
        "per_item": per_item,
        "seconds": round(time.time() - t0, 2),
    }


def accuracy_metrics(report: dict, prefix: str) -> dict[str, float]:
    """An :func:`evaluate_qa` report as metrics.jsonl keys: ``{prefix}_accuracy`` and ``{prefix}_{type}``."""
    return {f"{prefix}_accuracy": report["accuracy"], **{f"{prefix}_{k}": v for k, v in report["per_type"].items()}}


def summary(report: dict) -> str:
    """One line: accuracy and accuracy per question type."""
    per = " ".join(f"{k}={v:.3f}" for k, v in report["per_type"].items())
    return f"accuracy={report['accuracy']:.4f} ({per})"


def _qa_config_for(model: TinyVLM, hallucination: float = 0.0, types: list[str] | None = None, background: float = -1.0):
    from ..worlds.shapes import WorldConfig

    c = model.cfg
    extra = {"types": list(types)} if types else {}
    thinker = TIME[0] in getattr(model.tokenizer, "ids", {})  # trained on Video-Thinker traces: room for them
    return QAConfig(world=dataclasses.replace(WorldConfig(), height=c.height, width=c.width), frames=c.frames,
                    hallucination=hallucination, background=background, thinker=thinker, **extra)
