"""Video question answering on the shapes world, with answers known exactly.

Each item is a clip, a question, a tokenised option list and the ground truth.
Question types:

- multiple choice (answer is a letter): ``colour``, ``shape``, ``size``,
  ``direction``, ``speed``; the options are that attribute's values, in
  their fixed order or (``shuffle_options``) in an order drawn per item.
  ``direction`` and ``speed`` can only be read from frames in order
  (the T-GRPO contrast of ordered vs shuffled frames bites there).
- numeric: ``count`` — how many shapes are in the clip (1-3; each shape moves
  on its own), answered with a digit.
- progress (opt-in, the PRIMO / SOLE-R1 recipe): ``progress`` — how far across the
  frame the shape has come at the last frame, along its direction, in percent (the
  tenth it has reached: 0, 10, ..., 90), scored by the dense ``progress`` reward
  1 - |pred - truth| / 100.
- grounding (opt-in, the VideoTG-R1 / STVG-R1 / Scene-R1 recipe): ``when`` — "when is the
  red circle on screen ?": the named shape is on screen for a span of frames (2 to F - 2
  of them), with, in half the clips, another shape on screen throughout; the answer is the
  first and last frame ("2 5"), scored by the frame-span IoU. ``where`` — "where is the
  shape in frame 3 ?": the shape's box at that frame in eighths of the frame
  ("x1 y1 x2 y2", 0..8), scored by the box IoU. Each carries its ``span``, the frames the
  answer lives in (the curriculum masks the others for hard samples).
- temporal order: ``order`` — two shapes (different colour or kind) take turns:
  the first is on screen in the first half of the clip, the second in the
  second half; "which shape comes first ?" with the two as lettered options
  in an order drawn per item. Reversed or shuffled frames change the answer.

Hallucination items (the VideoHallu recipe): a share ``none_option`` of the choice
questions offers at most three values and, last, "none of these"; a share
``hallucination`` of them is asked where no offered value is right, so "none of
these" is the answer. Half leave the clip's value out of the options ("absent");
half show a counterexample clip whose asked attribute changes halfway (a shape that
turns another colour, becomes another kind or size, reverses or turns, speeds up or
slows down; its path continues without a jump), with both values among the options.
``hallucination: 1.0`` is the hallucination split.

Clips come from the world's splits: the test split holds out attribute
combinations, so held-out accuracy measures generalisation, not memory.
Item ``i`` of a split is the same on every machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..config import check
from .shapes import ATTRIBUTES, BACKGROUNDS, DIRECTIONS, SPEEDS, VALUES, ShapesWorld, WorldConfig

CHOICE_TYPES = ("colour", "shape", "size", "direction", "speed")
NUMERIC_TYPES = ("count",)
ORDER_TYPES = ("order",)
QUESTION_TYPES = CHOICE_TYPES + NUMERIC_TYPES + ORDER_TYPES
PROGRESS_TYPES = ("progress",)
GROUNDING_TYPES = ("when", "where")
"""Opt-in types (not in the default list, so default item streams stay as they were)."""
ALL_TYPES = QUESTION_TYPES + PROGRESS_TYPES + GROUNDING_TYPES
BOX_CELLS = 8
"""``where`` boxes are given in eighths of the frame (0..8 on each axis)."""
PROGRESS_ANSWERS = tuple(str(10 * i) for i in range(10))
LETTERS = "abcd"
TIME, CAPTION = ("<time>", "</time>"), ("<caption>", "</caption>")
"""Video-Thinker's grounding and captioning tags."""
NONE = "none of these"
MAX_COUNT = 3
QUESTIONS = {
    "colour": "what colour is the shape ?",
    "shape": "what kind of shape is it ?",
    "size": "how big is the shape ?",
    "direction": "which way does the shape move ?",
    "speed": "how fast does the shape move ?",
    "count": "how many shapes are there ?",
    "order": "which shape comes first ?",
    "progress": "how far across the frame has the shape come ?",
    "when": "when is the {} on screen ?",
    "where": "where is the shape in frame {} ?",
}
_SALT = {"train": 0xA11CE0, "val": 0xA11CE1, "test": 0xA11CE2}


@dataclass
class QAConfig:
    """The shapes QA task."""

    world: WorldConfig = field(default_factory=WorldConfig)
    types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    """Question types to draw from (uniformly)."""
    frames: int = 8
    """Frames per clip (even: the VLM's vision tower groups frames in pairs)."""
    shuffle_options: bool = False
    """Draw each choice question's option order at random (then a letter carries no meaning on its own and
    answering needs finding the value among the options); False lists values in their fixed order."""
    hallucination: float = check(0.0, "[0, 1]")
    """Share of choice questions whose answer is "none of these" (they offer at most three values and it):
    half with the clip's value left out of the options, half about a counterexample clip (the asked
    attribute changes halfway). 1.0 is the hallucination split; 0 (and ``none_option`` 0) leaves every
    item as it was."""
    background: float = check(-1.0, "[-1, 1]")
    """-1: the world's own backgrounds (dark 0.10, light 0.85); otherwise every clip's background brightness —
    a value no training clip had (0.5) is the held-out-attribute split of the RL-vs-SFT study."""
    thinker: bool = False
    """Video-Thinker traces: the reason (the SFT chain of thought) is written as grounded clues,
    "<time> 0 3 </time> <caption> red circle </caption> <time> 4 7 </time> <caption> blue square </caption>"."""
    none_option: float = check(0.0, "[0, 1]")
    """Share of choice questions that offer "none of these" (at least ``hallucination``); the others keep the
    usual option list. Above ``hallucination``, some offer it when a listed value is right, so its presence
    does not give the answer away."""


@dataclass
class QAItem:
    """One question about one clip."""

    qtype: str
    question: str
    options: list[str]
    """Option values in letter order (empty for numeric questions)."""
    answer: str
    """Ground truth: a letter for choice questions, a number for numeric ones."""
    value: str
    """The attribute value (or count) the answer stands for."""
    reason: str = ""
    """What a model should see before answering (the SFT chain of thought): the shape's size, colour,
    kind, direction and speed; for counts each shape's colour and kind; for order both, in order."""
    span: tuple[int, int] | None = None
    """Grounding questions: the first and last frame the answer lives in (the rest can be masked)."""
    clues: list[tuple[int, int, str]] = field(default_factory=list)
    """What is on screen when: (first frame, last frame, caption) per shape, in order of appearance — the
    grounding and captioning clues of a Video-Thinker trace."""
    scene: list[tuple[int, int, str]] = field(default_factory=list)
    """Every shape on screen, whatever is asked: (first frame, last frame, size colour kind direction speed), in
    order of appearance — what a streaming model can say about the clip before it hears the question (VST)."""

    def prompt(self) -> str:
        """Question and lettered options (the text after the video)."""
        opts = " ".join(f"( {LETTERS[i]} ) {v}" for i, v in enumerate(self.options))
        return f"{self.question} {opts}".strip()


class ShapesQA:
    """Deterministic generator of (clip, question) items for the three splits."""

    def __init__(self, cfg: QAConfig | None = None):
        self.cfg = cfg or QAConfig()
        bad = [t for t in self.cfg.types if t not in ALL_TYPES]
        if bad or not self.cfg.types:
            raise ValueError(f"unknown question type {bad[0] if bad else '(none)'!r}; valid: {', '.join(ALL_TYPES)}")
        self.world = ShapesWorld(self.cfg.world)

    def items(self, split: str, indices) -> tuple[torch.Tensor, list[QAItem]]:
        """Videos (B, F, 3, H, W) and items for item ``indices`` of ``split``."""
        return self._build(split, [torch.Generator().manual_seed(_SALT[split] * 1_000_003 + int(i)) for i in indices])

    def random_items(self, split: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[QAItem]]:
        """A random training batch drawn from ``generator``."""
        seeds = torch.randint(2**62, (n,), generator=generator).tolist()
        return self._build(split, [torch.Generator().manual_seed(s) for s in seeds])

    def _build(self, split: str, gens: list[torch.Generator]):
        videos, items = [], []
        for g in gens:
            qtype = self.cfg.types[int(torch.randint(len(self.cfg.types), (1,), generator=g))]
            count = int(torch.randint(1, MAX_COUNT + 1, (1,), generator=g)) if qtype == "count" else 1
            visible = None
            if qtype in ("order", "when"):
                attrs, starts = self.world.random_attributes(split, 2, g)
                while bool((attrs[0, :2] == attrs[1, :2]).all()):  # the two must be told apart by colour or kind
                    attrs[1:], starts[1:] = self.world.random_attributes(split, 1, g)
                visible = self._halves() if qtype == "order" else None
            else:
                attrs, starts = self.world.random_attributes(split, count, g)
            attrs[:, 5] = attrs[0, 5]  # one background per clip
            h, offer = self.cfg.hallucination, max(self.cfg.none_option, self.cfg.hallucination)
            r = float(torch.rand(1, generator=g)) if qtype in CHOICE_TYPES and offer else 1.0
            if r < offer:  # r < h / 2: absent, r < h: counterexample, else the value is offered beside "none of these"
                kind = "absent" if r < h / 2 else "counterexample" if r < h else "present"
                video, item = self._none_of_these_item(qtype, attrs, starts, g, kind)
            elif qtype == "when":
                video, item = self._when_item(attrs, starts, g)
            elif qtype == "where":
                video, item = self._where_item(attrs, starts, g)
            elif qtype == "progress":
                video = self.render(attrs, starts)
                item = QAItem(qtype, QUESTIONS[qtype], [], *(2 * [self.progress_answer(attrs, starts)]), _reason(attrs[0]))
            else:
                video, item = self.render(attrs, starts, visible), _item(qtype, attrs, g, self.cfg.shuffle_options)
            if not item.clues:  # one shape on screen throughout, or (count) several; order: the two halves
                item.clues = self._clues(qtype, attrs)
            if not item.scene:
                item.scene = scene(attrs, visible, self.cfg.frames)
            if self.cfg.thinker:
                item.reason = clue_text(item.clues)
            videos.append(video)
            items.append(item)
        return torch.stack(videos), items

    def _clues(self, qtype: str, attrs: torch.Tensor) -> list[tuple[int, int, str]]:
        F, half = self.cfg.frames, self.cfg.frames // 2
        kinds = [_kind(row) for row in attrs]
        if qtype == "order":
            return [(0, half - 1, kinds[0]), (half, F - 1, kinds[1])]
        if qtype == "count":
            return [(0, F - 1, k) for k in kinds]
        return [(0, F - 1, _reason(attrs[0]))]

    def _none_of_these_item(self, qtype: str, attrs: torch.Tensor, starts: torch.Tensor, g: torch.Generator, kind: str):
        """A choice question whose last option is "none of these". ``present``: the clip's value is among at most
        three offered values (the answer); ``absent``: every offered value is wrong; ``counterexample``: the
        clip's ``qtype`` attribute changes halfway along a path without a jump, and both values are offered.
        Every choice question carries the extra option, so its presence says nothing about the answer."""
        a = ATTRIBUTES.index(qtype)
        values = VALUES[qtype]
        shown = int(attrs[0, a])
        others = [i for i in range(len(values)) if i != shown]
        others = [others[i] for i in torch.randperm(len(others), generator=g).tolist()]
        reason = _reason(attrs[0])
        offered = sorted(others[:3] if kind == "absent" else [shown, *others[:2]])
        if kind == "counterexample":
            second = attrs.clone()
            second[0, a] = others[0]
            video = self.render(torch.cat((attrs, second)), torch.cat((starts, self.continued_start(attrs, second, starts))),
                                self._halves())
            reason = f"{reason} then {_reason(second[0])}"
            half = self.cfg.frames // 2
            clues = [(0, half - 1, _reason(attrs[0])), (half, self.cfg.frames - 1, _reason(second[0]))]
        else:
            video = self.render(attrs, starts)
        if self.cfg.shuffle_options:
            offered = [offered[i] for i in torch.randperm(len(offered), generator=g).tolist()]
        options = [values[i] for i in offered] + [NONE]
        value = values[shown] if kind == "present" else NONE
        item = QAItem(qtype, QUESTIONS[qtype], options, LETTERS[options.index(value)], value, reason)
        if kind == "counterexample":
            item.clues, item.scene = clues, scene(torch.cat((attrs, second)), self._halves())
        return video, item

    def _when_item(self, attrs: torch.Tensor, starts: torch.Tensor, g: torch.Generator):
        """The named (first) shape on screen for frames a..b; the other shape, told apart by colour or kind, on
        screen throughout in half the clips."""
        F = self.cfg.frames
        length = int(torch.randint(2, F - 1, (1,), generator=g))
        a = int(torch.randint(F - length + 1, (1,), generator=g))
        visible = torch.zeros(2, F)
        visible[0, a : a + length] = 1
        visible[1] = float(torch.rand(1, generator=g) < 0.5)
        b = a + length - 1
        answer = f"{a} {b}"
        clues = [(a, b, _reason(attrs[0]))] + ([(0, F - 1, _kind(attrs[1]))] if visible[1, 0] else [])
        item = QAItem("when", QUESTIONS["when"].format(_kind(attrs[0])), [], answer, answer, _reason(attrs[0]), (a, b),
                      sorted(clues), scene(attrs, visible))
        return self.render(attrs, starts, visible), item

    def _where_item(self, attrs: torch.Tensor, starts: torch.Tensor, g: torch.Generator):
        """The shape's box at a frame drawn per item, in eighths of the frame; the start is drawn again while the
        shape straddles an edge at that frame (a wrapped box has no single rectangle)."""
        k = int(torch.randint(self.cfg.frames, (1,), generator=g))
        box = self.box(attrs, starts, k)
        while box is None:
            starts = torch.rand(1, 2, generator=g)
            box = self.box(attrs, starts, k)
        answer = " ".join(str(v) for v in box)
        return self.render(attrs, starts), QAItem("where", QUESTIONS["where"].format(k), [], answer, answer,
                                                  _reason(attrs[0]), (k, k))

    def box(self, attrs: torch.Tensor, starts: torch.Tensor, frame: int) -> tuple[int, int, int, int] | None:
        """(x1, y1, x2, y2) in eighths of the frame enclosing the first shape's pixels (coverage > 1/2) at
        ``frame``, outward-rounded; None when it straddles an edge of the torus."""
        alpha, _ = self.world.layers(attrs[:1], starts[:1], frame + 1)
        on = alpha[0, frame, 0] > 0.5  # (H, W)
        cols, rows = on.any(0).nonzero().flatten(), on.any(1).nonzero().flatten()
        H, W = on.shape
        if not len(cols) or bool(on[:, 0].any() and on[:, -1].any()) or bool(on[0].any() and on[-1].any()):
            return None
        x1, x2 = int(cols[0]) * BOX_CELLS // W, -(-(int(cols[-1]) + 1) * BOX_CELLS // W)
        y1, y2 = int(rows[0]) * BOX_CELLS // H, -(-(int(rows[-1]) + 1) * BOX_CELLS // H)
        return x1, y1, x2, y2

    def progress(self, attrs: torch.Tensor, starts: torch.Tensor) -> float:
        """How far across the frame the (first) shape has come at the last frame, along its direction, in [0, 1):
        a right-mover at x = 0.7 of the width has come 0.7, a left-mover there 0.3 (the torus wraps at 1)."""
        end = starts[0] + self._travel(attrs[:1], self.cfg.frames - 1)[0]
        dx, dy = DIRECTIONS[VALUES["direction"][int(attrs[0, 3])]]
        along = float(end[0] % 1.0) if dx else float(end[1] % 1.0)
        return along if dx + dy > 0 else (1.0 - along) % 1.0

    def progress_answer(self, attrs: torch.Tensor, starts: torch.Tensor) -> str:
        """The progress in percent, the tenth it has reached (0, 10, ..., 90: one of PROGRESS_ANSWERS)."""
        return PROGRESS_ANSWERS[min(9, int(10 * self.progress(attrs, starts)))]

    def _travel(self, attrs: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, 2) displacement after ``frames`` frames in fractions of the width (x) and height (y)."""
        step = torch.tensor(list(DIRECTIONS.values()))[attrs[:, 3]] * torch.tensor(list(SPEEDS.values()))[attrs[:, 4], None]
        return step * frames * torch.tensor([1.0, self.cfg.world.width / self.cfg.world.height])

    def _halves(self) -> torch.Tensor:
        visible = torch.zeros(2, self.cfg.frames)
        visible[0, : self.cfg.frames // 2], visible[1, self.cfg.frames // 2 :] = 1, 1
        return visible

    def continued_start(self, first: torch.Tensor, second: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Start of ``second`` such that at the clip's middle frame it stands where ``first`` stands (torus)."""
        half = self.cfg.frames // 2
        return (starts + self._travel(first, half) - self._travel(second, half)) % 1.0

    def render(self, attrs: torch.Tensor, starts: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Composite ``len(attrs)`` moving shapes over the first one's background: (F, 3, H, W).
        ``visible`` (shapes, F) in [0, 1] shows each shape only in some frames."""
        cfg = self.cfg.world
        alpha, colour = self.world.layers(attrs, starts, self.cfg.frames)
        if visible is not None:
            alpha = alpha * visible[:, :, None, None, None]
        bg = self.cfg.background if self.cfg.background >= 0 else list(BACKGROUNDS.values())[int(attrs[0, 5])]
        video = torch.full((self.cfg.frames, 3, cfg.height, cfg.width), bg)
        for a, c in zip(alpha, colour):  # later shapes over earlier ones
            video = video * (1 - a) + c * a
        return video


def scene(attrs: torch.Tensor, visible: torch.Tensor | None, frames: int | None = None) -> list[tuple[int, int, str]]:
    """(first frame, last frame, full description) of each shape of ``attrs`` that is ever on screen (``visible``
    (shapes, F); None: every shape throughout ``frames`` frames), in order of appearance."""
    out = []
    for k, row in enumerate(attrs):
        on = torch.ones(frames) if visible is None else visible[k]
        idx = on.nonzero().flatten()
        if len(idx):
            out.append((int(idx[0]), int(idx[-1]), _reason(row)))
    return sorted(out)


def clue_text(clues: list[tuple[int, int, str]]) -> str:
    """A Video-Thinker trace: each clue as "<time> first last </time> <caption> words </caption>"."""
    return " ".join(f"{TIME[0]} {a} {b} {TIME[1]} {CAPTION[0]} {c} {CAPTION[1]}" for a, b, c in clues)


def _kind(row: torch.Tensor) -> str:
    return f"{VALUES['colour'][int(row[0])]} {VALUES['shape'][int(row[1])]}"


def _reason(row: torch.Tensor) -> str:
    x = dict(zip(ATTRIBUTES, (VALUES[k][i] for k, i in zip(ATTRIBUTES, row.tolist()))))
    return f"{x['size']} {x['colour']} {x['shape']} {x['direction']} {x['speed']}"


def _item(qtype: str, attrs: torch.Tensor, g: torch.Generator, shuffle: bool) -> QAItem:
    kinds = [_kind(row) for row in attrs]
    if qtype == "count":
        n = str(len(kinds))
        return QAItem(qtype, QUESTIONS[qtype], [], n, n, " ".join(kinds))
    if qtype == "order":
        first, second = kinds
        options = [first, second] if int(torch.randint(2, (1,), generator=g)) == 0 else [second, first]
        return QAItem(qtype, QUESTIONS[qtype], options, LETTERS[options.index(first)], first, f"{first} then {second}")
    values = VALUES[qtype]
    order = torch.randperm(len(values), generator=g).tolist() if shuffle else list(range(len(values)))
    options = [values[i] for i in order]
    value = values[int(attrs[0, ATTRIBUTES.index(qtype)])]
    return QAItem(qtype, QUESTIONS[qtype], options, LETTERS[options.index(value)], value, _reason(attrs[0]))


INVERTED = "which options are not right for :"
HINT = "hint :"


def mask_outside(video: torch.Tensor, span: tuple[int, int], ratio: float, g: torch.Generator) -> torch.Tensor:
    """VideoTG-R1's curriculum mask: blank (to 0) round(``ratio`` x n) of the n frames outside ``span``, drawn
    from ``g``; the frames in the span are kept. ``video`` is (F, 3, H, W)."""
    outside = [f for f in range(video.shape[0]) if not span[0] <= f <= span[1]]
    n = round(ratio * len(outside))
    if not n:
        return video
    picked = [outside[i] for i in torch.randperm(len(outside), generator=g)[:n].tolist()]
    out = video.clone()
    out[picked] = 0
    return out


def invert(item: QAItem) -> QAItem:
    """TW-GRPO question-answer inversion: ask for every *wrong* option of a choice question
    (several right letters, which the soft multi-choice reward credits in part)."""
    if not item.options:  # counts, progress, grounding: nothing to invert
        return item
    wrong = [LETTERS[i] for i, v in enumerate(item.options) if v != item.value]
    return dataclasses.replace(item, question=f"{INVERTED} {item.question}", answer=" ".join(wrong))


def with_hint(item: QAItem) -> QAItem:
    """Reg-GRPO easier variant of a question: the prompt names the value to look for
    (a choice question still needs the letter it sits at; a count the digit)."""
    return dataclasses.replace(item, question=f"{item.question} {HINT} {item.value}")


def vocabulary(cfg: QAConfig | None = None) -> list[str]:
    """Every word a shapes QA prompt or answer uses (the tiny VLM's tokenizer is built from it); "none of these"
    when ``cfg`` asks hallucination questions."""
    words: list[str] = []
    for text in (QUESTIONS[t] for t in QUESTION_TYPES):
        words += text.split()
    for name in ATTRIBUTES:
        words += list(VALUES[name])
    words += ["(", ")", *LETTERS, *(str(i) for i in range(10)), *INVERTED.split(), *HINT.split(), "then"]
    if cfg is not None and (cfg.hallucination or cfg.none_option):
        words += NONE.split()
    if cfg is not None and "progress" in cfg.types:
        words += QUESTIONS["progress"].split() + list(PROGRESS_ANSWERS)
    if cfg is not None and cfg.thinker:
        words += [*TIME, *CAPTION]
    for t in GROUNDING_TYPES:
        if cfg is not None and t in cfg.types:
            words += QUESTIONS[t].replace("{}", "").split()
    return list(dict.fromkeys(words))
