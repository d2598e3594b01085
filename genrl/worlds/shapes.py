"""The shapes world: procedurally generated, captioned videos of one moving shape.

Every clip shows one shape (colour, shape, size) gliding in a straight line
(direction, speed) over a plain background. Positions live on a torus: a shape
that leaves one edge re-enters at the opposite one, so a clip can be extended
to any length without the object disappearing.

Splits are defined on attribute *combinations*: the test split holds out a
fixed set of (colour, shape, direction) triples that never appear in train or
val, so a model that only memorised training combinations fails there.

Everything is batched torch; clip ``i`` of a split is the same on every machine.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..config import check
from . import SPLITS

# Attribute vocabularies. Order matters: attribute tensors hold indices into these.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.11, "large": 0.20}  # half-extent as a fraction of the frame height
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slowly": 0.03, "quickly": 0.065}  # displacement per frame, fraction of the frame width
BACKGROUNDS = {"dark": 0.10, "light": 0.85}

ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "background")
VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "direction": tuple(DIRECTIONS),
    "speed": tuple(SPEEDS),
    "background": tuple(BACKGROUNDS),
}
_SPLIT_SALT = {"train": 0x5EED0, "val": 0x5EED1, "test": 0x5EED2}


@dataclass
class WorldConfig:
    """Geometry of the shapes world."""

    height: int = check(32, "[8, 4096]")
    """Frame height in pixels."""
    width: int = check(32, "[8, 4096]")
    """Frame width in pixels."""
    frames: int = check(9, ">=1")
    """Frames per clip (the training length)."""
    held_out_triples: int = 8
    """How many (colour, shape, direction) triples the test split holds out."""


def caption(attrs: dict[str, str]) -> str:
    """Natural caption of one clip's attributes."""
    return (
        f"a {attrs['size']} {attrs['colour']} {attrs['shape']} moving {attrs['direction']} "
        f"{attrs['speed']} on a {attrs['background']} background"
    )


def parse_caption(text: str) -> dict[str, str | None]:
    """Recover the attributes a prompt asks for (None where it names none)."""
    words = [w.strip(".,;:!?").lower() for w in text.split()]
    out: dict[str, str | None] = {}
    for name in ATTRIBUTES:
        hits = [w for w in words if w in VALUES[name]]
        out[name] = hits[0] if hits else None
    return out


def held_out_triples(n: int) -> list[tuple[int, int, int]]:
    """The (colour, shape, direction) index triples reserved for the test split.

    Chosen so that every pair of values in each triple still appears together in
    training: held-out triples never share a pair with each other.
    """
    g = torch.Generator().manual_seed(1234)
    triples = list(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(DIRECTIONS))))
    order = torch.randperm(len(triples), generator=g).tolist()
    chosen: list[tuple[int, int, int]] = []
    used_pairs: set[tuple[int, int, int, int]] = set()
    for i in order:
        c, s, d = triples[i]
        pairs = {(0, c, 1, s), (0, c, 2, d), (1, s, 2, d)}
        if pairs & used_pairs:
            continue
        chosen.append((c, s, d))
        used_pairs |= pairs
        if len(chosen) == n:
            break
    return sorted(chosen)


class ShapesWorld:
    """Deterministic generator of captioned shape clips for the three splits."""

    def __init__(self, cfg: WorldConfig | None = None):
        self.cfg = cfg or WorldConfig()
        test = set(held_out_triples(self.cfg.held_out_triples))
        self._combos: dict[str, torch.Tensor] = {}
        all_combos = list(itertools.product(*(range(len(VALUES[a])) for a in ATTRIBUTES)))
        train = [c for c in all_combos if (c[0], c[1], c[3]) not in test]
        held = [c for c in all_combos if (c[0], c[1], c[3]) in test]
        self._combos = {"train": torch.tensor(train), "val": torch.tensor(train), "test": torch.tensor(held)}

    # ------------------------------------------------------------------ sampling
    def combos(self, split: str) -> torch.Tensor:
        """All attribute-index rows (N, 6) allowed in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self._combos[split]

    def attributes(self, split: str, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute indices (B, 6) and start positions (B, 2) of clips ``indices`` of ``split``.

        Clip ``i`` of a split is a pure function of (split, i).
        """
        combos = self.combos(split)
        idx = torch.as_tensor(indices, dtype=torch.long)
        attrs, starts = [], []
        for i in idx.tolist():
            g = torch.Generator().manual_seed(_SPLIT_SALT[split] * 1_000_003 + int(i))
            attrs.append(combos[torch.randint(len(combos), (1,), generator=g)].squeeze(0))
            starts.append(torch.rand(2, generator=g))
        return torch.stack(attrs), torch.stack(starts)

    def random_attributes(self, split: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random clips of ``split`` drawn from ``generator`` (for training streams)."""
        combos = self.combos(split)
        rows = torch.randint(len(combos), (n,), generator=generator)
        return combos[rows], torch.rand(n, 2, generator=generator)

    def clips(self, split: str, indices, frames: int | None = None) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Videos (B, F, 3, H, W) in [0, 1], captions and attribute indices for ``indices``."""
        attrs, starts = self.attributes(split, indices)
        return self.render(attrs, starts, frames), self.captions(attrs), attrs

    def random_clips(self, split: str, n: int, generator: torch.Generator, frames: int | None = None):
        """A random training batch: videos, captions, attribute indices."""
        attrs, starts = self.random_attributes(split, n, generator)
        return self.render(attrs, starts, frames), self.captions(attrs), attrs

    # ------------------------------------------------ the prompt-source interface
    def random_prompts(self, split: str, n: int, generator: torch.Generator) -> list[str]:
        """Captions of ``n`` random clips (the same draws as ``random_clips``, without rendering)."""
        return self.captions(self.random_attributes(split, n, generator)[0])

    def prompts(self, split: str, indices) -> list[str]:
        """Captions of clips ``indices`` of ``split``."""
        return self.captions(self.attributes(split, indices)[0])

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """The attribute probe's prompt accuracy of generated videos."""
        from .probe import AttributeProbe

        return {"sample_prompt_accuracy": AttributeProbe().prompt_accuracy(videos, prompts)[0]}

    # ----------------------------------------------------------------- rendering
    @staticmethod
    def captions(attrs: torch.Tensor) -> list[str]:
        return [caption(attribute_names(row)) for row in attrs.tolist()]

    def render(self, attrs: torch.Tensor, starts: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Rasterise clips with anti-aliased edges on a torus. Returns (B, F, 3, H, W)."""
        alpha, fg = self.layers(attrs, starts, frames)
        bg = torch.tensor(list(BACKGROUNDS.values()))[attrs[:, 5]]  # (B,)
        return bg[:, None, None, None, None] * (1 - alpha) + fg * alpha

    def layers(self, attrs: torch.Tensor, starts: torch.Tensor, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clip's moving shape as coverage (B, F, 1, H, W) and colour (B, 1, 3, 1, 1), for compositing."""
        H, W, F = self.cfg.height, self.cfg.width, frames or self.cfg.frames
        B = attrs.shape[0]
        colour = torch.tensor(list(COLOURS.values()))[attrs[:, 0]]  # (B, 3)
        half = torch.tensor(list(SIZES.values()))[attrs[:, 2]] * H  # (B,)
        direction = torch.tensor(list(DIRECTIONS.values()))[attrs[:, 3]]  # (B, 2)
        speed = torch.tensor(list(SPEEDS.values()))[attrs[:, 4]] * W  # (B,)

        t = torch.arange(F, dtype=torch.float32)
        cx = starts[:, 0, None] * W + direction[:, 0, None] * speed[:, None] * t  # (B, F)
        cy = starts[:, 1, None] * H + direction[:, 1, None] * speed[:, None] * t
        kind = attrs[:, 1, None].expand(B, F)
        alpha = shape_alpha(kind, half[:, None].expand(B, F), cx, cy, H, W)[:, :, None]  # (B, F, 1, H, W)
        return alpha, colour[:, None, :, None, None]


def attribute_names(row) -> dict[str, str]:
    """Index row -> {attribute: value name}."""
    return {a: VALUES[a][int(i)] for a, i in zip(ATTRIBUTES, row)}


def attribute_indices(names: dict[str, str]) -> list[int]:
    """{attribute: value name} -> index row."""
    return [VALUES[a].index(names[a]) for a in ATTRIBUTES]


def shape_alpha(kind: torch.Tensor, half: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, H: int, W: int):
    """Anti-aliased coverage (..., H, W) of shapes ``kind`` (index into SHAPES) of
    half-extent ``half`` centred at (cx, cy) pixels, on an H x W torus."""
    ys = torch.arange(H, dtype=torch.float32) + 0.5
    xs = torch.arange(W, dtype=torch.float32) + 0.5
    dx = _wrap(xs - cx[..., None, None], W).expand(*cx.shape, H, W)
    dy = _wrap(ys[:, None] - cy[..., None, None], H).expand(*cx.shape, H, W)
    r = half[..., None, None].expand(*cx.shape, H, W)
    sdf = torch.empty(*cx.shape, H, W)
    for k, fn in enumerate((_sdf_square, _sdf_circle, _sdf_triangle)):
        m = kind == k
        if m.any():
            sdf[m] = fn(dx[m], dy[m], r[m])
    return (0.5 - sdf).clamp(0, 1)


# The triangle's centre of mass sits r/3 below the centre of its bounding box.
TRIANGLE_CENTROID_OFFSET = 1.0 / 3.0


def _wrap(d: torch.Tensor, period: float) -> torch.Tensor:
    """Signed torus offset in [-period/2, period/2)."""
    return torch.remainder(d + period / 2, period) - period / 2


def _sdf_square(dx, dy, r):
    return torch.maximum(dx.abs(), dy.abs()) - r


def _sdf_circle(dx, dy, r):
    return torch.sqrt(dx**2 + dy**2) - r


def _sdf_triangle(dx, dy, r):
    # Apex up, base 2r at the bottom: half-width at height dy is (dy + r) / 2.
    slant = (dx.abs() - 0.5 * dy - 0.5 * r) / (math.sqrt(5) / 2)
    return torch.maximum(torch.maximum(-r - dy, dy - r), slant)
