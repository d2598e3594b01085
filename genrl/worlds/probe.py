"""The attribute probe: reads a shapes-world video back into its attributes.

It is the referee for every quality claim in genrl, so it is deliberately
strict and analytic (no learned weights that a generator could fool):

1. background = per-frame median colour; it must be one of the world's greys;
2. foreground = pixels far from the background; a frame counts only when its
   largest 8-connected component (on the torus) holds >= 90% of the
   foreground and has a plausible area — scattered fragments of the right
   colour fail here, before colour, shape or motion are read;
3. colour = nearest palette colour of the component's core pixels (must be close);
   shape and size = the world shape whose rendering at the object's centroid
   overlaps its soft coverage best (soft IoU, which must reach ``min_iou``);
4. motion = mean torus displacement of the centroid between frames; every
   step must roughly agree with it (jitter and teleports fail), and speed is
   its length.

A clip is readable when >= 75% of its frames hold one coherent object.
Unreadable clips get no attributes and so match no prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    SPEEDS,
    TRIANGLE_CENTROID_OFFSET,
    parse_caption,
    shape_alpha,
)


@dataclass
class ProbeResult:
    """What the probe read from one clip."""

    readable: bool
    attributes: dict[str, str | None]
    coherent_frames: float
    """Fraction of frames holding exactly one coherent object."""
    details: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[float, float] | None] = field(default_factory=list)
    """The centroid's torus displacement (dx, dy) from each frame to the next; None where either frame
    holds no coherent object. Empty for an unreadable clip."""

    def jerk(self) -> float | None:
        """Mean length of the change between consecutive steps (pixels; 0 for constant velocity), or None."""
        pairs = [(a, b) for a, b in zip(self.steps[:-1], self.steps[1:]) if a is not None and b is not None]
        if not pairs:
            return None
        return sum(((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5 for a, b in pairs) / len(pairs)


@dataclass
class ProbeConfig:
    fg_threshold: float = 0.35
    """Colour distance from the background above which a pixel is foreground."""
    coherent_fraction: float = 0.9
    """Share of the foreground the largest component must hold."""
    min_area_frac: float = 0.012
    """Smallest object area, as a fraction of the frame."""
    max_area_frac: float = 0.30
    """Largest object area, as a fraction of the frame."""
    colour_tolerance: float = 0.30
    """Largest distance from the nearest palette colour."""
    background_tolerance: float = 0.20
    """Largest distance of the background grey from a world grey."""
    readable_frames: float = 0.75
    """Share of coherent frames a clip needs to be read at all."""
    min_iou: float = 0.5
    """Smallest soft IoU between the object and the best-matching world shape."""
    step_agreement: float = 0.5
    """Each frame-to-frame step must carry at least this share of the mean motion."""


class AttributeProbe:
    """Recovers (colour, shape, size, direction, speed, background) from videos."""

    def __init__(self, cfg: ProbeConfig | None = None):
        self.cfg = cfg or ProbeConfig()
        self._palette = torch.tensor(list(COLOURS.values()))
        self._greys = torch.tensor(list(BACKGROUNDS.values()))

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def read(self, videos: torch.Tensor) -> list[ProbeResult]:
        """Read a batch of videos (B, F, 3, H, W) in [0, 1]."""
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"expected videos of shape (B, F, 3, H, W), got {tuple(videos.shape)}")
        videos = videos.detach().float().cpu().clamp(0, 1)
        B, F, _, H, W = videos.shape
        frames = self._read_frames(videos.reshape(B * F, 3, H, W))
        return [self._read_clip(frames[b * F : (b + 1) * F], H, W) for b in range(B)]

    def prompt_accuracy(self, videos: torch.Tensor, prompts: list[str]) -> tuple[float, list[bool]]:
        """Fraction of clips whose every attribute named in their prompt is read back."""
        results = self.read(videos)
        hits = [matches(r, p) for r, p in zip(results, prompts)]
        return (sum(hits) / max(len(hits), 1)), hits

    # ---------------------------------------------------------------- per frame
    def _read_frames(self, frames: torch.Tensor) -> list[dict | None]:
        c = self.cfg
        N, _, H, W = frames.shape
        bg, diff, masks = foreground(frames, c.fg_threshold)  # (N, 3), (N, H, W), (N, H, W)
        grey_dist = (bg[:, None, :] - self._greys[None, :, None]).norm(dim=2)  # (N, greys)
        labels = _torus_components(masks)
        out: list[dict | None] = []
        for i in range(N):
            out.append(self._object(frames[i], bg[i], grey_dist[i], diff[i], masks[i], labels[i]))
        self._match_templates(frames, bg, out)
        return out

    def _object(self, frame, bg, grey_dist, diff, mask, labels) -> dict | None:
        """The frame's one coherent object (colour, centroid, soft coverage), or None."""
        c = self.cfg
        _, H, W = frame.shape
        total = int(mask.sum())
        if grey_dist.min() > c.background_tolerance or total < c.min_area_frac * H * W:
            return None
        counts = torch.bincount(labels[mask])
        best = int(counts.argmax())
        comp = labels == best
        area = int(counts[best])
        if area < c.coherent_fraction * total or area > c.max_area_frac * H * W:
            return None
        core = comp & (diff > 0.5 * diff[comp].max())
        pd = (self._palette - frame[:, core].mean(dim=1)[None]).norm(dim=1)
        if pd.min() > c.colour_tolerance:
            return None
        colour = int(pd.argmin())
        # soft coverage: projection of (pixel - bg) onto (palette colour - bg), kept near the component
        axis = self._palette[colour] - bg
        alpha = ((frame - bg[:, None, None]) * axis[:, None, None]).sum(0) / axis.dot(axis).clamp_min(1e-6)
        near = torch.nn.functional.max_pool2d(comp[None, None].float(), 3, 1, 1)[0, 0] > 0
        alpha = (alpha.clamp(0, 1) * near).float()
        ys, xs = torch.nonzero(alpha > 0, as_tuple=True)
        wts = alpha[ys, xs]
        cx = _circular_mean(xs.float() + 0.5, wts, W)
        cy = _circular_mean(ys.float() + 0.5, wts, H)
        return {"colour": colour, "background": int(grey_dist.argmin()), "centre": (cx, cy), "alpha": alpha}

    def _match_templates(self, frames: torch.Tensor, bg: torch.Tensor, objs: list[dict | None]) -> None:
        """Best (shape, size) per object by soft IoU against the world's own rasteriser."""
        idx = [i for i, o in enumerate(objs) if o is not None]
        if not idx:
            return
        _, _, H, W = frames.shape
        n, k = len(idx), len(SHAPES) * len(SIZES)
        kind = torch.arange(len(SHAPES)).repeat_interleave(len(SIZES)).expand(n, k)
        half = (torch.tensor(list(SIZES.values())) * H).repeat(len(SHAPES)).expand(n, k)
        cx = torch.tensor([objs[i]["centre"][0] for i in idx])[:, None].expand(n, k)
        cy = torch.tensor([objs[i]["centre"][1] for i in idx])[:, None].expand(n, k)
        cy = cy - (kind == SHAPES.index("triangle")) * half * TRIANGLE_CENTROID_OFFSET
        templates = shape_alpha(kind, half, cx, cy, H, W)  # (n, k, H, W)
        alpha = torch.stack([objs[i]["alpha"] for i in idx])[:, None]
        iou = torch.minimum(alpha, templates).sum((2, 3)) / torch.maximum(alpha, templates).sum((2, 3))
        score, best = iou.max(dim=1)
        for j, i in enumerate(idx):
            if score[j] < self.cfg.min_iou:
                objs[i] = None
                continue
            objs[i]["shape"] = int(best[j]) // len(SIZES)
            objs[i]["size"] = int(best[j]) % len(SIZES)
            objs[i]["iou"] = float(score[j])
            del objs[i]["alpha"]

    # ----------------------------------------------------------------- per clip
    def _read_clip(self, frames: list[dict | None], H: int, W: int) -> ProbeResult:
        c = self.cfg
        ok = [f for f in frames if f is not None]
        coherent = len(ok) / len(frames)
        none = {a: None for a in ATTRIBUTES}
        if coherent < c.readable_frames or len(ok) < 2:
            return ProbeResult(False, none, coherent)
        attrs: dict[str, str | None] = dict(none)
        attrs["colour"] = list(COLOURS)[_mode([f["colour"] for f in ok])]
        attrs["background"] = list(BACKGROUNDS)[_mode([f["background"] for f in ok])]
        attrs["shape"] = SHAPES[_mode([f["shape"] for f in ok])]
        attrs["size"] = list(SIZES)[_mode([f["size"] for f in ok])]
        steps = _steps(frames, H, W)
        motion = self._motion([s for s in steps if s is not None])
        details = {"iou": _median([f["iou"] for f in ok]), **motion}
        if motion["consistent"]:
            vx, vy = motion["vx"], motion["vy"]
            if abs(vx) >= abs(vy):
                attrs["direction"] = "right" if vx > 0 else "left"
            else:
                attrs["direction"] = "down" if vy > 0 else "up"
            speed_cut = 0.5 * (SPEEDS["slowly"] + SPEEDS["quickly"]) * W
            attrs["speed"] = "slowly" if motion["speed"] < speed_cut else "quickly"
        return ProbeResult(True, attrs, coherent, details, steps)

    def _motion(self, steps: list[tuple[float, float]]) -> dict[str, float]:
        """Mean velocity, speed and whether every read step agrees with it."""
        if not steps:
            return {"vx": 0.0, "vy": 0.0, "speed": 0.0, "consistent": 0.0}
        vx = sum(s[0] for s in steps) / len(steps)
        vy = sum(s[1] for s in steps) / len(steps)
        speed = (vx**2 + vy**2) ** 0.5
        if speed < 0.25:  # a standing object has no direction
            return {"vx": vx, "vy": vy, "speed": speed, "consistent": 0.0}
        ux, uy = vx / speed, vy / speed
        agree = [
            (s[0] * ux + s[1] * uy) >= self.cfg.step_agreement * speed
            and abs(-s[0] * uy + s[1] * ux) <= max(1.0, 0.5 * speed)
            for s in steps
        ]
        consistent = sum(agree) / len(agree) >= 0.8
        return {"vx": vx, "vy": vy, "speed": speed, "consistent": float(consistent)}


def foreground(frames: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The probe's foreground rule for frames (..., C, H, W): each frame's background colour (its median,
    (..., C)), every pixel's distance from it (..., H, W), and the pixels farther than ``threshold``."""
    bg = frames.flatten(-2).median(dim=-1).values
    diff = (frames - bg[..., None, None]).norm(dim=-3)
    return bg, diff, diff > threshold


def matches(result: ProbeResult, prompt: str) -> bool:
    """True when every attribute the prompt names was read back as named."""
    want = parse_caption(prompt)
    named = {a: v for a, v in want.items() if v is not None}
    return bool(named) and result.readable and all(result.attributes[a] == v for a, v in named.items())


def _steps(frames: list[dict | None], H: int, W: int) -> list[tuple[float, float] | None]:
    """Torus displacement of the centroid between consecutive frames (None where either has no object)."""
    return [None if a is None or b is None else
            (_wrap(b["centre"][0] - a["centre"][0], W), _wrap(b["centre"][1] - a["centre"][1], H))
            for a, b in zip(frames[:-1], frames[1:])]


def _wrap(d: float, period: float) -> float:
    return (d + period / 2) % period - period / 2


def _circular_mean(coords: torch.Tensor, weights: torch.Tensor, period: int) -> float:
    """Weighted mean position on a ring of length ``period``."""
    ang = coords * (2 * torch.pi / period)
    mean = torch.atan2((weights * torch.sin(ang)).sum(), (weights * torch.cos(ang)).sum())
    centre = float(mean) * period / (2 * torch.pi) % period
    offsets = torch.remainder(coords - centre + period / 2, period) - period / 2
    return (centre + float((weights * offsets).sum() / weights.sum())) % period


def _torus_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of boolean masks (N, H, W) with wrap-around.

    Label propagation: each foreground pixel repeatedly takes the largest label
    among its neighbours until nothing changes. Background pixels get label 0.
    """
    N, H, W = masks.shape
    ids = torch.arange(1, H * W + 1).reshape(1, H, W).expand(N, H, W)
    labels = torch.where(masks, ids, torch.zeros((), dtype=torch.long))
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    while True:
        nb = torch.stack([torch.roll(labels, s, dims=(1, 2)) for s in shifts]).amax(dim=0)
        new = torch.where(masks, torch.maximum(labels, nb), labels)
        if torch.equal(new, labels):
            return labels
        labels = new


def _mode(xs: list[int]) -> int:
    return max(set(xs), key=xs.count)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]
