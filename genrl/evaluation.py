"""Measuring a generator on held-out prompts: the one evaluation `genrl eval` and sweeps share.

Everything is read back from pixels: the attribute probe gives prompt accuracy
(all attributes, each attribute, and the first / last quarter of the frames for
drift on long videos); reward models give mean z-scores per axis. Costs are
frames per second of generation and network evaluations per frame.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .generation import SamplingConfig, generate
from .models.video_model import VideoModel
from .progress import progress_bar
from .worlds.probe import AttributeProbe
from .worlds.shapes import ATTRIBUTES, ShapesWorld, WorldConfig, parse_caption


def load_reward(name: str):
    """A reward backend by name, or the shapes backend with a .safetensors file / built-in weights name."""
    from rewards.base import build_reward, reward_names

    if name in reward_names():
        return build_reward(name)
    return build_reward("shapes", weights=name)


@torch.no_grad()
def evaluate(gen: VideoModel, split: str = "test", num: int = 128, batch: int = 32, frames: int | None = None,
             sampling: SamplingConfig | None = None, rewards: list[str] = ("shapes",), seed: int = 0,
             quiet: bool = False) -> dict:
    """Generate ``num`` videos for ``split`` prompts and measure them; returns the report dict.

    ``rewards``: reward models to average (names or weights); the first is reported as
    ``reward``, all of them under ``rewards``.
    """
    sampling = sampling or SamplingConfig()
    world, probe = ShapesWorld(WorldConfig()), AttributeProbe()
    models = {name: load_reward(name) for name in rewards}
    frames = frames or world.cfg.frames
    hits, per_attr, gen_seconds, nfe = [], {a: 0 for a in ATTRIBUTES}, 0.0, 0.0
    quarter = frames // 4
    first_hits, last_hits = [], []
    sums: dict[str, dict[str, float]] = {name: {} for name in models}
    start = time.time()
    with progress_bar(num, "eval", quiet) as advance:
        for lo in range(0, num, batch):
            idx = list(range(seed * 1_000_000 + lo, seed * 1_000_000 + min(lo + batch, num)))
            _, prompts, _ = world.clips(split, idx)
            result = generate(gen, prompts, frames, sampling, seed=seed * 7919 + lo)
            gen_seconds += result.seconds
            nfe = result.nfe_per_frame
            for name, rm in models.items():
                scores = rm(result.videos, prompts)
                for k, v in {**scores.z, "overall": scores.overall}.items():
                    sums[name][k] = sums[name].get(k, 0.0) + float(v.sum())
            if quarter >= 2:
                first_hits += probe.prompt_accuracy(result.videos[:, :quarter], prompts)[1]
                last_hits += probe.prompt_accuracy(result.videos[:, -quarter:], prompts)[1]
            for r, p in zip(probe.read(result.videos), prompts):
                want = parse_caption(p)
                ok = [r.attributes[a] == want[a] for a in ATTRIBUTES]
                hits.append(all(ok))
                for a, o in zip(ATTRIBUTES, ok):
                    per_attr[a] += o
            advance(len(idx), f"acc={sum(hits) / len(hits):.3f}")
    means = {name: {k: v / num for k, v in s.items()} for name, s in sums.items()}
    return {
        "split": split,
        "num_videos": num,
        "frames": frames,
        "prompt_accuracy": sum(hits) / num,
        "attribute_accuracy": {a: v / num for a, v in per_attr.items()},
        "first_quarter_accuracy": sum(first_hits) / num if first_hits else None,
        "last_quarter_accuracy": sum(last_hits) / num if last_hits else None,
        "reward": means[rewards[0]] if rewards else None,
        "reward_model": rewards[0] if rewards else None,
        "rewards": means,
        "seconds": round(time.time() - start, 2),
        "frames_per_second": round(num * frames / gen_seconds, 2),
        "nfe_per_frame": nfe,
        "steps": sampling.steps,
        "guidance": sampling.guidance,
        "seed": seed,
    }


def evaluate_run(run: str | Path, num: int, rewards: list[str], split: str = "test", frames: int | None = None,
                 seed: int = 0, quiet: bool = False) -> dict:
    """Evaluate a run folder's exported model and write the report to ``{run}/eval.json``."""
    from .models.registry import load_model

    run = Path(run)
    gen = load_model(str(run / "model.safetensors"), kind="video_model")
    report = {"model": str(run), **evaluate(gen, split, num, frames=frames, rewards=rewards, seed=seed, quiet=quiet)}
    (run / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
