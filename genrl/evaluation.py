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

from .generation import SamplingConfig, generate, is_streaming, stream_schedule
from .models.video_model import VideoModel
from .progress import progress_bar
from .errors import UsageError
from .worlds.probe import AttributeProbe
from .worlds.shapes import ATTRIBUTES, ShapesWorld, WorldConfig


def load_reward(name: str):
    """A reward backend by name (its default weights), ``backend:weights`` (e.g. ``vlm:runs/progress``), or the
    shapes backend with a .safetensors file / built-in weights name."""
    from .registry import REWARDS

    if name in REWARDS:
        return REWARDS.get(name)()
    backend, sep, weights = name.partition(":")
    if sep:
        if backend not in REWARDS:
            raise UsageError(f"reward {name!r}: unknown backend {backend!r}; valid: {', '.join(REWARDS.names())}")
        return REWARDS.get(backend)(weights=weights)
    return REWARDS.get("shapes")(weights=name)


PROMPT_STYLES = ("full", "partial", "paraphrase")


def eval_prompts(world: ShapesWorld, split: str, idx: list[int], style: str, generator: torch.Generator):
    """Prompts for clips ``idx`` and the attributes each names.

    full: the world's caption; partial: a random subset of the attributes (each named with
    probability 1/2, possibly none), phrases in random order; paraphrase: all six attributes
    in other words ("big", "fast", "going left", "on a white background"), in random order.
    """
    from .worlds.prompting import written_prompt
    from .worlds.shapes import attribute_names

    _, captions, attrs = world.clips(split, idx)
    if style == "full":
        return captions, [attribute_names(row) for row in attrs.tolist()]
    prompts, named = [], []
    for row in attrs.tolist():
        full = attribute_names(row)
        keep = ATTRIBUTES if style == "paraphrase" else [a for a in ATTRIBUTES if torch.rand(1, generator=generator) < 0.5]
        prompts.append(written_prompt(full, list(keep), generator, paraphrase=style == "paraphrase"))
        named.append({a: full[a] for a in keep})
    return prompts, named


def named_hits(results, named: list[dict[str, str]]) -> list[bool]:
    """A clip is right when it shows one coherent object with every named attribute (none named: coherent)."""
    return [r.readable and all(r.attributes[a] == v for a, v in want.items()) for r, want in zip(results, named)]


@torch.no_grad()
def evaluate(gen: VideoModel, split: str = "test", num: int = 128, batch: int = 32, frames: int | None = None,
             sampling: SamplingConfig | None = None, rewards: list[str] = ("shapes",), seed: int = 0,
             quiet: bool = False, prompts: str = "full", same_prompts: bool = False) -> dict:
    """Generate ``num`` videos for ``split`` prompts and measure them; returns the report dict.

    ``rewards``: reward models to average (names or weights); the first is reported as
    ``reward``, all of them under ``rewards``. ``prompts``: 'full' captions, 'partial' or
    'paraphrase' prompts (see :func:`eval_prompts`); accuracy counts the named attributes.
    """
    if prompts not in PROMPT_STYLES:
        raise ValueError(f"prompts must be one of {', '.join(PROMPT_STYLES)}, got {prompts!r}")
    style = prompts
    sampling = sampling or SamplingConfig()
    world, probe = ShapesWorld(WorldConfig()), AttributeProbe()
    rng = torch.Generator().manual_seed(seed * 31 + 7)
    models = {name: load_reward(name) for name in rewards}
    frames = frames or world.cfg.frames
    hits, per_attr, named_count, gen_seconds, nfe = [], {a: 0 for a in ATTRIBUTES}, {a: 0 for a in ATTRIBUTES}, 0.0, 0.0
    quarter = frames // 4
    first_hits, last_hits = [], []
    jerks: list[float | None] = []
    named_all: list[dict[str, str]] = []  # what each prompt named, so `genrl compare --by` can split by it
    chunk = gen.pixel_frames(gen.cfg.dit.chunk_frames) if is_streaming(gen) else None
    across, inside = [], []  # step lengths from the last frame of a chunk to the next chunk's first / within a chunk
    sums: dict[str, dict[str, float]] = {name: {} for name in models}
    per_video: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    start = time.time()
    with progress_bar(num, "eval", quiet) as advance:
        for lo in range(0, num, batch):
            base = 0 if same_prompts else seed * 1_000_000  # same_prompts: only the noise changes with the seed
            idx = list(range(base + lo, base + min(lo + batch, num)))
            prompts, named = eval_prompts(world, split, idx, style, rng)
            result = generate(gen, prompts, frames, sampling, seed=seed * 7919 + lo)
            gen_seconds += result.seconds
            nfe = result.nfe_per_frame
            for name, rm in models.items():
                scores = rm(result.videos, prompts)
                for k, v in {**scores.z, "overall": scores.overall}.items():
                    sums[name][k] = sums[name].get(k, 0.0) + float(v.sum())
                    per_video[name].setdefault(k, []).extend(round(float(x), 5) for x in v)
            if quarter >= 2:
                first_hits += named_hits(probe.read(result.videos[:, :quarter]), named)
                last_hits += named_hits(probe.read(result.videos[:, -quarter:]), named)
            results = probe.read(result.videos)
            hits += named_hits(results, named)
            named_all += named
            jerks += [r.jerk() for r in results]
            if chunk:
                for r in results:
                    for i, st in enumerate(r.steps):
                        if st is not None:
                            (across if (i + 1) % chunk == 0 else inside).append((st[0] ** 2 + st[1] ** 2) ** 0.5)
            for r, want in zip(results, named):
                for a, v in want.items():
                    per_attr[a] += r.attributes[a] == v
                    named_count[a] += 1
            advance(len(idx), f"acc={sum(hits) / len(hits):.3f}")
    means = {name: {k: v / num for k, v in s.items()} for name, s in sums.items()}
    from .stats import auc, auc_difference

    first = rewards[0] if rewards else None  # each other reward's probe AUC against the first's, paired by video
    auc_vs_first = {name: auc_difference(per_video[first]["overall"], per_video[name]["overall"], hits)
                    for name in models if name != first}

    return {
        "split": split,
        "num_videos": num,
        "frames": frames,
        "prompt_accuracy": sum(hits) / num,
        "prompts": style,
        "attribute_accuracy": {a: v / named_count[a] for a, v in per_attr.items() if named_count[a]},
        "first_quarter_accuracy": sum(first_hits) / num if first_hits else None,
        "last_quarter_accuracy": sum(last_hits) / num if last_hits else None,
        "reward": means[rewards[0]] if rewards else None,
        "reward_model": first,
        "rewards": means,
        "reward_probe_auc": {name: auc(per_video[name]["overall"], hits) for name in models},
        "reward_probe_auc_vs_first": auc_vs_first,
        "motion": motion_summary(jerks, across, inside),
        "per_video": {"hit": [int(h) for h in hits], "rewards": per_video,
                      "jerk": [None if j is None else round(j, 5) for j in jerks], "named": named_all},
        "seconds": round(time.time() - start, 2),
        "frames_per_second": round(num * frames / gen_seconds, 2),
        "nfe_per_frame": nfe,
        **sampling_record(gen, sampling),
        "seed": seed,
    }


def sampling_record(gen: VideoModel, sampling: SamplingConfig) -> dict:
    """The sampling settings a report was made with, as the model ran them: a streaming student's
    per-chunk timesteps (it samples without CFG: guidance None), or a teacher's Euler steps and CFG."""
    if is_streaming(gen):
        sched = stream_schedule(gen, sampling)
        timesteps, first = sched["timesteps"], sched["first_timesteps"]
        return {"steps": len(timesteps), "timesteps": timesteps, "guidance": None,
                **({"first_chunk_timesteps": first} if first != timesteps else {})}
    return {"steps": sampling.steps, "guidance": sampling.guidance}


def motion_summary(jerks: list[float | None], across: list[float], inside: list[float]) -> dict:
    """How the probe-read object moves: mean jerk (pixels a frame; 0 for the world's constant velocity) over
    the videos where it could be read, and for a streaming model the mean step across chunk boundaries and
    within chunks (equal when chunking leaves no seam)."""
    read = [j for j in jerks if j is not None]
    out = {"jerk": sum(read) / len(read) if read else None, "videos_read": len(read)}
    if across and inside:
        out |= {"step_across_chunks": sum(across) / len(across), "step_inside_chunks": sum(inside) / len(inside)}
    return out


def validation_accuracy(gen: VideoModel, num: int, frames: int | None = None, seeds: tuple[int, ...] = (0, 1)) -> dict[str, float]:
    """Probe-read prompt accuracy on the first ``num`` val-split prompts, the same prompts at each sampling
    seed (so two validations of one run pair video for video): the mean, and each seed's figure."""
    accs = [evaluate(gen, "val", num, frames=frames, rewards=[], seed=s, quiet=True, same_prompts=True)["prompt_accuracy"]
            for s in seeds]
    return {"val_prompt_accuracy": sum(accs) / len(accs), **{f"val_prompt_accuracy_seed{s}": a for s, a in zip(seeds, accs)}}


def evaluate_run(run: str | Path, num: int, rewards: list[str], split: str = "test", frames: int | None = None,
                 seed: int | list[int] = 0, quiet: bool = False) -> dict:
    """Evaluate a run folder's exported model and write the report to ``{run}/eval.json``.

    Several sampling ``seed``s evaluate the same prompts with other noise: the figures are their
    mean and the per-video records are concatenated (seed by seed), so runs pair video for video.
    """
    from .models.registry import load_model

    run = Path(run)
    gen = load_model(str(run / "model.safetensors"), kind="video_model")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    reports = [evaluate(gen, split, num, frames=frames, rewards=rewards, seed=s, quiet=quiet, same_prompts=True)
               for s in seeds]
    report = {"model": str(run), **merge_reports(reports), "sampling_seeds": seeds}
    (run / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def merge_reports(reports: list[dict]) -> dict:
    """One report for several sampling seeds: means of the figures, per-video records concatenated."""
    if len(reports) == 1:
        return reports[0]
    out = dict(reports[0])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for key in ("prompt_accuracy", "first_quarter_accuracy", "last_quarter_accuracy", "frames_per_second"):
        vals = [r[key] for r in reports if r.get(key) is not None]
        out[key] = mean(vals) if vals else None
    out["attribute_accuracy"] = {a: mean([r["attribute_accuracy"][a] for r in reports]) for a in reports[0]["attribute_accuracy"]}
    out["rewards"] = {n: {k: mean([r["rewards"][n][k] for r in reports]) for k in reports[0]["rewards"][n]}
                      for n in reports[0]["rewards"]}
    out["reward"] = out["rewards"].get(out["reward_model"]) if out.get("reward_model") else None
    hits = [h for r in reports for h in r["per_video"]["hit"]]
    per = {n: {k: [x for r in reports for x in r["per_video"]["rewards"][n][k]] for k in reports[0]["per_video"]["rewards"][n]}
           for n in reports[0]["per_video"]["rewards"]}
    out["per_video"] = {"hit": hits, "rewards": per}
    if all("named" in r["per_video"] for r in reports):
        out["per_video"]["named"] = [n for r in reports for n in r["per_video"]["named"]]
    if all("jerk" in r["per_video"] for r in reports):
        jerks = [j for r in reports for j in r["per_video"]["jerk"]]
        out["per_video"]["jerk"] = jerks
        out["motion"] = motion_summary(jerks, [], [])
        for key in ("step_across_chunks", "step_inside_chunks"):  # the sampling seeds' mean
            if all(key in r.get("motion", {}) for r in reports):
                out["motion"][key] = mean([r["motion"][key] for r in reports])
    from .stats import auc

    out["reward_probe_auc"] = {n: auc(per[n]["overall"], [bool(h) for h in hits]) for n in per}
    out["num_videos"] = len(hits)
    out["seed"] = [r["seed"] for r in reports]
    return out
