"""Prompts from a text file, one per line: the prompt source of real-model recipes.

Real text-to-video distillation trains on prompts only (Self-Forcing reads a
prompt list, one per line); there are no clips and no probe. This source offers
the same prompt interface as the shapes world (``random_prompts``, ``prompts``,
``score``), so DMD, Stream-R1 and ODE init run on either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError


@dataclass
class PromptSourceConfig:
    frames: int
    """Pixel frames per generated video (Wan2.1: 4k+1, e.g. 81)."""


class PromptFile:
    """Training prompts are drawn at random from the whole file; 'val'/'test' read it in order."""

    def __init__(self, path: str | Path, frames: int):
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"prompt file {path} does not exist (one prompt per line)")
        self.lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not self.lines:
            raise UsageError(f"prompt file {path} holds no prompts (one per line; '#' starts a comment)")
        self.path, self.cfg = path, PromptSourceConfig(frames)

    def random_prompts(self, split: str, n: int, generator: torch.Generator) -> list[str]:
        rows = torch.randint(len(self.lines), (n,), generator=generator)
        return [self.lines[i] for i in rows.tolist()]

    def prompts(self, split: str, indices) -> list[str]:
        return [self.lines[i % len(self.lines)] for i in indices]

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """No ground truth for free-form prompts: nothing to score."""
        return {}
