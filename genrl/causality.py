"""How causal is a bidirectional teacher? What a chunk-by-chunk student can learn from its ODE pairs.

A streaming student makes chunk c seeing only the noise of chunks 0..c (and its own earlier output), while a
bidirectional teacher makes every chunk from the noise of the whole clip. Regressing the student onto the
teacher's outputs (ODE init) therefore teaches it E[teacher's chunk c | noise of chunks <= c]: whatever the
later noise decides is averaged away. :func:`causal_report` measures how much that is, per chunk:

* ``share_unfixed``: the share of the variance of the teacher's chunk-c latents (per prompt) left once the noise of
  chunks <= c is fixed: 0 means that noise decides the chunk, 1 means it decides nothing. From ``bases`` noises per
  prompt, each finished with ``draws`` fresh draws of the later chunks' noise, by the one-way ANOVA estimators
  (within-draw variance, and the spread of the draw means less its own sampling noise).
* for the first chunk, the probe's accuracy on its frames for single draws and for the mean of each base's draws,
  the target a causal regression converges to.
"""

from __future__ import annotations

import torch

from .evaluation import eval_prompts, named_hits
from .models.video_model import VideoModel
from .progress import progress_bar
from .worlds.probe import AttributeProbe
from .worlds.shapes import ShapesWorld, WorldConfig


def variance_shares(y: torch.Tensor) -> tuple[float, float]:
    """(within, between) variance of ``y`` (P, M, K, ...): P prompts, M groups each, K draws a group, averaged
    over prompts and elements. Within: mean unbiased variance over the K draws; between: the variance of the M
    group means less within / K (the one-way random-effects ANOVA estimators; between may come out below 0 when
    it is small)."""
    if y.shape[1] < 2 or y.shape[2] < 2:
        raise ValueError(f"need at least 2 groups and 2 draws a group, got {y.shape[1]} and {y.shape[2]}")
    within = y.var(dim=2).mean()
    between = y.mean(dim=2).var(dim=1).mean() - within / y.shape[2]
    return float(within), float(between)


@torch.no_grad()
def causal_report(teacher: VideoModel, split: str = "val", num: int = 32, frames: int | None = None, steps: int = 50,
                  guidance: float = 4.0, bases: int = 2, draws: int = 4, batch: int = 32, seed: int = 0,
                  quiet: bool = False) -> dict:
    """Per chunk of ``teacher``'s videos (its ``dit.chunk_frames`` latent frames), how much the noise of that chunk
    and the earlier ones fixes it, on ``num`` ``split`` prompts (see the module doc); ``num x bases x draws``
    teacher videos per chunk but the last (whose noise is all of it)."""
    world, probe = ShapesWorld(WorldConfig()), AttributeProbe()
    frames = frames or world.cfg.frames
    chunk, latent_frames = teacher.cfg.dit.chunk_frames, teacher.latent_frames(frames)
    n_chunks = latent_frames // chunk
    if n_chunks < 2:
        raise ValueError(f"{frames} frames make {n_chunks} chunk(s) of {chunk} latent frames; need at least 2")
    prompts, named = eval_prompts(world, split, list(range(num)), "full", torch.Generator().manual_seed(seed))
    prompts = teacher.prepare_prompts(prompts, seed + 104_729)
    g = torch.Generator().manual_seed(seed * 7919 + 11)
    per_chunk, shape = [], teacher.latent_shape(1, frames)[1:]
    with progress_bar(num * bases * draws * (n_chunks - 1), "causal", quiet) as advance:
        for c in range(n_chunks - 1):
            noise = torch.randn((num, bases, 1, *shape), generator=g).repeat(1, 1, draws, *[1] * len(shape))
            cut = (c + 1) * chunk
            noise[:, :, :, cut:] = torch.randn(noise[:, :, :, cut:].shape, generator=g)  # later chunks: fresh
            flat, each = noise.flatten(0, 2), [p for p in prompts for _ in range(bases * draws)]
            out = []
            for lo in range(0, len(each), batch):
                out.append(teacher.sample(each[lo:lo + batch], frames, steps, guidance, noise=flat[lo:lo + batch]).cpu())
                advance(len(each[lo:lo + batch]))
            lat = torch.cat(out).unflatten(0, (num, bases, draws))
            within, between = variance_shares(lat[:, :, :, c * chunk:cut])
            row = {"chunk": c, "share_unfixed": within / (within + between), "within": within, "between": between}
            if c == 0:
                pix = teacher.pixel_frames(chunk)
                single = named_hits(probe.read(teacher.decode(lat.flatten(0, 2))[:, :pix]),
                                    [n for n in named for _ in range(bases * draws)])
                mean = named_hits(probe.read(teacher.decode(lat.mean(dim=2).flatten(0, 1))[:, :pix]),
                                  [n for n in named for _ in range(bases)])
                row.update(probe_single=sum(single) / len(single), probe_mean_of_draws=sum(mean) / len(mean))
            per_chunk.append(row)
    return {"split": split, "num_prompts": num, "frames": frames, "chunk_frames": chunk, "bases": bases,
            "draws": draws, "steps": steps, "guidance": guidance, "seed": seed, "chunks": per_chunk}
