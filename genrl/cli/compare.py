"""`genrl compare`: two generators' eval files, paired video for video, with 95% bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from .options import output_file

PAIRING = ("split", "num_videos", "frames", "prompts", "seed", "steps", "guidance")
"""What two eval files must share to be compared video for video."""
QA_PAIRING = ("split", "num", "hallucination", "types", "background", "task", "chunk_frames")
"""What two `--task qa` eval files must share to be compared question for question."""


def _load(path: str) -> dict:
    p = Path(path)
    try:
        report = json.loads(p.read_text())
        report["per_item"]["reward"] if "per_item" in report else report["per_video"]["hit"]
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path}: not a `genrl eval --out` file with per-video (or per-question) results") from None
    return report


def _count(report: dict) -> int:
    return len(report["per_item"]["reward"]) if "per_item" in report else len(report["per_video"]["hit"])


def per_video(report: dict) -> dict[str, list[float]]:
    """prompt_accuracy and every reward axis of an eval file, one value per video; for a QA file, accuracy
    (the task reward) per question, overall and per question type, and the reasoning's consistency."""
    if "per_item" in report:
        items = report["per_item"]
        out = {"accuracy": [float(r) for r in items["reward"]]}
        if "consistent" in items:  # the verifier's judgement of each think block (VerIPO)
            out["consistency"] = [float(c) for c in items["consistent"]]
        if "clues" in items:  # how well the think block's grounded captions match the clip (Video-Thinker)
            out["clues"] = [float(c) for c in items["clues"]]
        for t in dict.fromkeys(items["type"]):
            out[f"accuracy:{t}"] = [float(r) for r, k in zip(items["reward"], items["type"]) if k == t]
        return out
    out = {"prompt_accuracy": [float(h) for h in report["per_video"]["hit"]]}
    for name, axes in report["per_video"]["rewards"].items():
        for axis, vals in axes.items():
            out[f"{name}:{axis}"] = [float(v) for v in vals]
    if "jerk" in report["per_video"]:  # None where the probe could not read the motion: paired where both can
        out["motion_jerk"] = report["per_video"]["jerk"]
    return out


def compare_reports(baseline: list[dict], candidate: list[dict], seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Metric -> (mean of candidate - baseline, 95% low, 95% high) over all paired videos of all file pairs."""
    import torch

    from ..stats import paired_bootstrap

    if len(baseline) != len(candidate):
        raise UsageError(f"{len(baseline)} baseline file(s) but {len(candidate)} candidate file(s); pair them one to one")
    base: dict[str, list[float]] = {}
    cand: dict[str, list[float]] = {}
    for i, (a, b) in enumerate(zip(baseline, candidate)):
        if ("per_item" in a) != ("per_item" in b):
            raise UsageError(f"pair {i + 1}: a video eval file and a QA eval file cannot be compared")
        for k in QA_PAIRING if "per_item" in a else PAIRING:
            if a.get(k) != b.get(k):
                raise UsageError(f"pair {i + 1}: '{k}' differs ({a.get(k)!r} vs {b.get(k)!r}); videos can only be "
                                 "paired when prompts, seeds and sampling settings are the same")
        pa, pb = per_video(a), per_video(b)
        for k in pa:
            if k in pb:
                both = [(x, y) for x, y in zip(pa[k], pb[k]) if x is not None and y is not None]
                base.setdefault(k, []).extend(x for x, _ in both)
                cand.setdefault(k, []).extend(y for _, y in both)
    return {k: paired_bootstrap(torch.tensor(cand[k]) - torch.tensor(base[k]), seed=seed) for k in base}


@click.command(name="compare")
@click.argument("baseline", nargs=-1, required=True)
@click.option("--vs", "candidate", multiple=True, required=True,
              help="Eval file of the model compared with the baseline (repeat, in the baseline files' order).")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the differences as JSON.")
def compare(baseline, candidate, out):
    """Paired difference of two generators on the same prompts and sampling seeds (or two video-language models
    on the same questions), with 95% intervals.

    BASELINE and --vs are `genrl eval --out` files made with the same --split, --num,
    --frames, --prompts, --seed and sampling settings (one pair per sampling seed). Each
    metric's difference (candidate - baseline) is averaged over every video of every
    pair and bootstrapped over videos; an interval holding 0 is no measured difference.

    \b
    Example (two sampling seeds):
      genrl eval --model shapes-student-dmd --num 512 --seed 0 --reward shapes --reward shapes-reward-b --out d0.json
      genrl eval --model shapes-student-stream-r1 --num 512 --seed 0 --reward shapes --reward shapes-reward-b --out s0.json
      (the same with --seed 1 into d1.json, s1.json)
      genrl compare d0.json d1.json --vs s0.json --vs s1.json
      genrl eval --task qa --model shapes-vlm --num 512 --out a.json   (and --checkpoint runs/x --out b.json)
      genrl compare a.json --vs b.json
    """
    base = [_load(p) for p in baseline]
    result = compare_reports(base, [_load(p) for p in candidate])
    n = sum(_count(r) for r in base)
    what = "questions" if "per_item" in base[0] else "videos"
    click.echo(f"candidate - baseline over {n} paired {what} (95% bootstrap interval; one holding 0 is no measured difference)")
    click.echo(f"{'metric':<28} {'difference':>11} {'95% interval':>22}")
    for k, (m, lo, hi) in result.items():
        flag = "" if lo <= 0 <= hi else "  *"
        click.echo(f"{k:<28} {m:>+11.4f} [{lo:>+9.4f}, {hi:>+9.4f}]{flag}")
    if out:
        Path(out).write_text(json.dumps({k: {"mean": m, "low": lo, "high": hi} for k, (m, lo, hi) in result.items()},
                                        indent=2) + "\n")
