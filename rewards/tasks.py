"""Verifiable task rewards for GRPO on video understanding, as pure functions.

Each takes a completion's text and the ground truth and returns a float in
[0, 1]. ``TASK_REWARDS`` maps the names configs use to them; a completion's
answer is what sits between ``<answer>`` and ``</answer>``.

- ``choice``: exact match of the chosen option letter(s) (as a set).
- ``soft_choice`` (TW-GRPO): |pred| / |gt| when pred is a non-empty subset of
  gt, else 0 — partial credit for naming some of several right options.
- ``numeric``: 1 for the right number; with ``tolerance`` > 0, linear credit
  1 - |pred - gt| / (tolerance * max(|gt|, 1)) down to 0.
- ``temporal_iou``: IoU of a predicted ``start end`` segment with the truth
  (grounding rewards in VideoTG-R1 / STVG-R1).
- ``frame_span``: IoU of a predicted ``first last`` span of frames with the truth,
  both ends included (frames 2-3 against 2-5: 2 of 4 frames).
- ``box_iou``: IoU of a predicted ``x1 y1 x2 y2`` box with the truth (STVG-R1's
  spatial reward).
- ``progress``: 1 - |pred - gt| / 100 for task progress in percent (the MAE
  reward of PRIMO / SOLE-R1), clipped at 0.
- ``clues`` (Video-Thinker): how well a think block's grounded captions
  ``<time> a b </time> <caption> words </caption>`` match the clip's: clues paired
  greedily, each pair scoring frame-span IoU x word Jaccard of the captions, summed
  and divided by the larger of the two clue counts (missing or extra clues cost).
- ``format``: 1 when the text is ``<think> ... </think> <answer> ... </answer>``.
"""

from __future__ import annotations

import re
from typing import Callable

from genrl import registry

_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.+?</answer>\s*$", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_text(text: str) -> str | None:
    """The text between the answer tags (stripped), or None without them."""
    m = _ANSWER.search(text)
    return m.group(1).strip() if m else None


def _letters(s: str | None) -> set[str]:
    return set(re.findall(r"[a-z]", s.lower())) if s else set()


def _number(s: str | None) -> float | None:
    m = _NUMBER.search(s or "")
    return float(m.group()) if m else None


def format_reward(text: str, truth: str = "") -> float:
    return 1.0 if _FORMAT.match(text) else 0.0


def choice_reward(text: str, truth: str) -> float:
    pred = _letters(answer_text(text))
    return float(bool(pred) and pred == _letters(truth))


def soft_choice_reward(text: str, truth: str) -> float:
    pred, gt = _letters(answer_text(text)), _letters(truth)
    return len(pred) / len(gt) if pred and gt and pred <= gt else 0.0


def numeric_reward(text: str, truth: str, tolerance: float = 0.0) -> float:
    pred, gt = _number(answer_text(text)), _number(truth)
    if pred is None or gt is None:
        return 0.0
    if tolerance <= 0:
        return float(pred == gt)
    return max(0.0, 1.0 - abs(pred - gt) / (tolerance * max(abs(gt), 1.0)))


def temporal_iou(pred: tuple[float, float], truth: tuple[float, float]) -> float:
    """IoU of two [start, end] segments (0 for empty or disjoint ones)."""
    (ps, pe), (ts, te) = sorted(pred), sorted(truth)
    inter = max(0.0, min(pe, te) - max(ps, ts))
    union = max(pe, te) - min(ps, ts)
    return inter / union if union > 0 else 0.0


def temporal_iou_reward(text: str, truth: str) -> float:
    nums = _NUMBER.findall(answer_text(text) or "")
    gt = [float(x) for x in _NUMBER.findall(truth)]
    if len(nums) < 2 or len(gt) < 2:
        return 0.0
    return temporal_iou((float(nums[0]), float(nums[1])), (gt[0], gt[1]))


def _numbers(text: str, n: int) -> list[float] | None:
    nums = [float(x) for x in _NUMBER.findall(text or "")]
    return nums[:n] if len(nums) >= n else None


def frame_span_iou(pred, truth) -> float:
    """IoU of two spans of frames given as (first, last) in either order, both ends included."""
    (ps, pe), (ts, te) = sorted(pred), sorted(truth)
    return temporal_iou((ps, pe + 1), (ts, te + 1))


def frame_span_reward(text: str, truth: str) -> float:
    pred, gt = _numbers(answer_text(text), 2), _numbers(truth, 2)
    if pred is None or gt is None:
        return 0.0
    return frame_span_iou(pred, gt)


def box_iou_reward(text: str, truth: str) -> float:
    pred, gt = _numbers(answer_text(text), 4), _numbers(truth, 4)
    if pred is None or gt is None:
        return 0.0
    (px1, px2), (py1, py2), (tx1, tx2), (ty1, ty2) = (sorted(pred[0::2]), sorted(pred[1::2]), sorted(gt[0::2]),
                                                      sorted(gt[1::2]))
    inter = max(0.0, min(px2, tx2) - max(px1, tx1)) * max(0.0, min(py2, ty2) - max(py1, ty1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    return inter / union if union > 0 else 0.0


_CLUE = re.compile(r"<time>\s*(\d+)\s+(\d+)\s*</time>\s*<caption>(.*?)</caption>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def parse_clues(text: str) -> list[tuple[int, int, frozenset[str]]]:
    """(first frame, last frame, caption words) of each ``<time> a b </time> <caption> ... </caption>`` in ``text``."""
    return [(int(a), int(b), frozenset(c.split())) for a, b, c in _CLUE.findall(text)]


def clue_reward(text: str, truth: str) -> float:
    think = _THINK.search(text)
    pred, gt = parse_clues(think.group(1) if think else ""), parse_clues(truth)
    if not pred or not gt:
        return 0.0
    score = [[frame_span_iou((pa, pb), (ga, gb)) * len(pc & gc) / len(pc | gc)
              for ga, gb, gc in gt] for pa, pb, pc in pred]
    total, used = 0.0, set()
    for row in score:  # each predicted clue takes the best truth clue still free
        free = [j for j in range(len(gt)) if j not in used]
        if free:
            j = max(free, key=lambda k: row[k])
            used.add(j)
            total += row[j]
    return total / max(len(pred), len(gt))


def progress_reward(text: str, truth: str) -> float:
    pred, gt = _number(answer_text(text)), _number(truth)
    if pred is None or gt is None:
        return 0.0
    return max(0.0, 1.0 - abs(pred - gt) / 100.0)


TASK_REWARDS: dict[str, Callable[[str, str], float]] = {
    "choice": choice_reward,
    "soft_choice": soft_choice_reward,
    "numeric": numeric_reward,
    "temporal_iou": temporal_iou_reward,
    "frame_span": frame_span_reward,
    "box_iou": box_iou_reward,
    "progress": progress_reward,
    "clues": clue_reward,
    "format": format_reward,
}

for _name, _fn in TASK_REWARDS.items():  # genrl's GRPO core looks them up by name through its registry
    registry.TASK_REWARDS.register(_name, _fn)
