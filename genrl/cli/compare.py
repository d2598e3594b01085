"""`genrl compare`: two generators' eval files, paired video for video, with 95% bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from .options import output_file

PAIRING = ("split", "num_videos", "frames", "prompts", "seed")
"""What two eval files must share to be compared video for video: the same prompts at the same sampling
seed. Steps and guidance may differ: they are part of what is compared (a student against its teacher)."""
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
                                 "paired when prompts and sampling seeds are the same")
        pa, pb = per_video(a), per_video(b)
        for k in pa:
            if k in pb:
                both = [(x, y) for x, y in zip(pa[k], pb[k]) if x is not None and y is not None]
                base.setdefault(k, []).extend(x for x, _ in both)
                cand.setdefault(k, []).extend(y for _, y in both)
    # a metric no pair of videos has on both sides (motion jerk where the probe read no motion) has no difference
    return {k: paired_bootstrap(torch.tensor(cand[k]) - torch.tensor(base[k]), seed=seed) for k in base if base[k]}


def _masked(report: dict, keep: list[bool]) -> dict:
    """A copy of a video eval file holding only the videos where ``keep`` is true."""
    pv = report["per_video"]
    pick = lambda xs: [x for x, k in zip(xs, keep) if k]  # noqa: E731
    out = {k: pick(v) for k, v in pv.items() if k != "rewards"}
    out["rewards"] = {n: {a: pick(v) for a, v in axes.items()} for n, axes in pv["rewards"].items()}
    return {**report, "per_video": out}


def compare_by(baseline: list[dict], candidate: list[dict], attribute: str,
               seed: int = 0) -> dict[str, tuple[int, dict[str, tuple[float, float, float]]]]:
    """:func:`compare_reports` within each value of a prompt attribute (the videos whose prompt named
    ``attribute`` as that value): value -> (number of paired videos, metric -> interval)."""
    from ..worlds.shapes import ATTRIBUTES

    if attribute not in ATTRIBUTES:
        raise UsageError(f"--by {attribute}: not a prompt attribute; valid: {', '.join(ATTRIBUTES)}")
    for r in baseline + candidate:
        if "per_item" in r or "named" not in r["per_video"]:
            raise UsageError("--by needs video eval files that record what each prompt named "
                             "(made by `genrl eval` from this version on); re-run genrl eval")
    for a, b in zip(baseline, candidate):
        if a["per_video"]["named"] != b["per_video"]["named"]:
            raise UsageError("--by: the two files' prompts name different attributes; they are not the same prompts")
    values = sorted({n[attribute] for r in baseline for n in r["per_video"]["named"] if attribute in n})
    out = {}
    for v in values:
        keeps = [[n.get(attribute) == v for n in r["per_video"]["named"]] for r in baseline]
        out[v] = (sum(map(sum, keeps)), compare_reports([_masked(r, k) for r, k in zip(baseline, keeps)],
                                                        [_masked(r, k) for r, k in zip(candidate, keeps)], seed))
    return out


def _print_table(result: dict[str, tuple[float, float, float]]) -> None:
    click.echo(f"{'metric':<28} {'difference':>11} {'95% interval':>22}")
    for k, (m, lo, hi) in result.items():
        flag = "" if lo <= 0 <= hi else "  *"
        click.echo(f"{k:<28} {m:>+11.4f} [{lo:>+9.4f}, {hi:>+9.4f}]{flag}")


@click.command(name="compare")
@click.argument("baseline", nargs=-1, required=True)
@click.option("--vs", "candidate", multiple=True, required=True,
              help="Eval file of the model compared with the baseline (repeat, in the baseline files' order).")
@click.option("--by", "by", default=None, metavar="ATTRIBUTE",
              help="Also split the videos by what their prompts named for this attribute (e.g. speed, size) and "
                   "compare within each value.")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the differences as JSON.")
@click.option("--plot", type=output_file((".png", ".pdf", ".svg")), default=None,
              help="Also draw the differences as a forest plot: each metric's mean and 95% interval against 0 "
                   "(a panel for all the videos, then one per --by value).")
def compare(baseline, candidate, by, out, plot):
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
      genrl compare d0.json d1.json --vs s0.json --vs s1.json --plot diff.png
      genrl eval --task qa --model shapes-vlm --num 512 --out a.json   (and --checkpoint runs/x --out b.json)
      genrl compare a.json --vs b.json
    """
    base = [_load(p) for p in baseline]
    cand = [_load(p) for p in candidate]
    split = compare_by(base, cand, by) if by else {}  # first: a bad --by is told before any bootstrap runs
    result = compare_reports(base, cand)
    n = sum(_count(r) for r in base)
    what = "questions" if "per_item" in base[0] else "videos"
    click.echo(f"candidate - baseline over {n} paired {what} (95% bootstrap interval; one holding 0 is no measured difference)")
    _print_table(result)
    for v, (count, res) in split.items():
        click.echo(f"\n{by} = {v} ({count} paired {what})")
        _print_table(res)
    if out:
        table = lambda res: {k: {"mean": m, "low": lo, "high": hi} for k, (m, lo, hi) in res.items()}  # noqa: E731
        body = table(result) | ({"by": {by: {v: {"videos": c, **table(res)} for v, (c, res) in split.items()}}}
                                if by else {})
        Path(out).write_text(json.dumps(body, indent=2) + "\n")
    if plot:
        panels = {"all": result} | {f"{by} = {v}": res for v, (_, res) in split.items()}
        forest_plot(panels, Path(plot), f"{_names(cand)} - {_names(base)}")


def _names(reports: list[dict]) -> str:
    return " / ".join(dict.fromkeys(str(r.get("model", "?")) for r in reports))


def forest_plot(panels: dict[str, dict[str, tuple[float, float, float]]], path: Path, title: str) -> list[dict]:
    """Each panel's metrics as points (the mean difference) with 95% intervals, a line at 0, and the intervals
    that exclude 0 drawn in colour. Returns what was drawn, read back from the axes: [{panel, metric, mean,
    low, high}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(r) for r in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 0.32 * rows + 1.4), dpi=110,
                             sharey=True, squeeze=False)
    drawn = []
    for ax, (name, res) in zip(axes[0], panels.items()):
        metrics = list(res)
        y = list(range(len(metrics)))[::-1]
        for yi, k in zip(y, metrics):
            m, lo, hi = res[k]
            colour = "#b22222" if hi < 0 else "#1f6fb2" if lo > 0 else "#555555"
            ax.errorbar([m], [yi], xerr=[[m - lo], [hi - m]], fmt="o", color=colour, capsize=3, markersize=4)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, metrics, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("difference (95% interval)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        for container, label in zip(ax.containers, metrics):  # read back what the axes hold
            (x,), (yy,) = container.lines[0].get_data()
            seg = container.lines[2][0].get_segments()[0]
            drawn.append({"panel": name, "metric": label, "y": float(yy), "mean": float(x),
                          "low": float(seg[0][0]), "high": float(seg[1][0])})
    fig.suptitle(title + " (blue: interval above 0, red: below 0, grey: holds 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drawn


def select_candidate(reports: list[dict], baseline: str, metric: str | None = None,
                     guard: tuple[str, ...] = ()) -> dict:
    """The validation pick of a rule written down before any result: among the candidates (every model other than
    ``baseline`` in ``reports``, grouped by the eval files' ``model``), those whose ``metric`` beats the baseline's
    (paired mean difference > 0) while no ``guard`` metric is measurably lower (the upper end of its paired 95%
    interval >= 0) are eligible; the eligible one with the highest ``metric`` is the pick (ties: the first listed).
    ``guard`` empty means every metric named ``name:axis`` (each reward model's axes; per-type QA accuracies)."""
    groups: dict[str, list[dict]] = {}
    for r in reports:
        groups.setdefault(str(r.get("model")), []).append(r)
    if baseline not in groups:
        raise UsageError(f"no eval file of the baseline '{baseline}'; the files hold: {', '.join(groups)}")
    qa = "per_item" in reports[0]
    metric = metric or ("accuracy" if qa else "prompt_accuracy")

    def by_seed(name: str) -> dict:
        files = {}
        for r in groups[name]:
            seed = r.get("seed")
            seed = tuple(seed) if isinstance(seed, list) else seed  # a run's eval.json: the seeds it merged
            if seed in files:
                raise UsageError(f"'{name}' has two eval files at sampling seed {r.get('seed')}; give one per seed")
            files[seed] = r
        return files

    def ordered(seeds) -> list:  # single seeds and merged seed lists never compare with each other
        return sorted(seeds, key=lambda s: (isinstance(s, tuple), s))

    base = by_seed(baseline)
    rows = []
    for name in groups:
        if name == baseline:
            continue
        cand = by_seed(name)
        if set(cand) != set(base):
            raise UsageError(f"'{name}' has sampling seeds {ordered(cand)} but the baseline {ordered(base)}; "
                             "every candidate needs one eval file per baseline seed")
        seeds = ordered(base)
        diffs = compare_reports([base[s] for s in seeds], [cand[s] for s in seeds])
        if metric not in diffs:
            raise UsageError(f"no metric '{metric}' in the eval files; they hold: {', '.join(diffs)}")
        guarded = list(guard) or [k for k in diffs if ":" in k and k != metric]
        missing = [g for g in guarded if g not in diffs]
        if missing:
            raise UsageError(f"no guard metric {', '.join(missing)} in the eval files; they hold: {', '.join(diffs)}")
        values = [v for s in seeds for v in per_video(cand[s])[metric]]
        worst = min(guarded, key=lambda g: diffs[g][2], default=None)
        rows.append({"model": name, metric: sum(values) / len(values), "difference": list(diffs[metric]),
                     "worst_guard": worst, "worst_guard_interval": list(diffs[worst]) if worst else None,
                     "eligible": diffs[metric][0] > 0 and all(diffs[g][2] >= 0 for g in guarded)})
    values = [v for s in ordered(base) for v in per_video(base[s])[metric]]
    eligible = [r for r in rows if r["eligible"]]
    pick = max(eligible, key=lambda r: r[metric])["model"] if eligible else None  # max keeps the first of ties
    return {"metric": metric, "baseline": baseline, "baseline_value": sum(values) / len(values),
            "seeds": ordered(base), "candidates": rows, "pick": pick}


@click.command(name="select")
@click.argument("files", nargs=-1, required=True)
@click.option("--baseline", required=True, help="The model every candidate must beat (its eval files' 'model').")
@click.option("--metric", default=None, help="What the pick maximises (default prompt_accuracy; QA files: accuracy).")
@click.option("--guard", multiple=True, help="A metric no candidate may measurably lose (repeat; default: every "
                                             "reward axis, i.e. every metric named reward:axis).")
@click.option("--out", type=output_file((".json",)), default=None, help="Also write the table and the pick as JSON.")
def select(files, baseline, metric, guard, out):
    """Pick a checkpoint on validation by a rule fixed in advance: it must beat the baseline's accuracy and lose
    no guarded metric, and among those the highest accuracy wins.

    FILES are `genrl eval --out` files on one validation split, any number of models, one file per model and
    sampling seed; they are grouped by the model each names and paired with the baseline's file of the same
    seed. A candidate is eligible when its paired accuracy difference to the baseline is above zero and no
    guarded metric's 95% interval lies entirely below zero. Read the pick's test figures once, afterwards.

    \b
    Example (the baseline and two checkpoints, two sampling seeds each):
      genrl eval --model shapes-student-dmd --split val --num 256 --seed 0 --reward shapes --reward shapes-reward-b --out val/base_0.json
      genrl eval --checkpoint runs/dmd/checkpoints/step_0000300 --split val --num 256 --seed 0 ... --out val/s300_0.json
      (and --seed 1; and the other checkpoints)
      genrl select val/*.json --baseline shapes-student-dmd
    """
    report = select_candidate([_load(p) for p in files], baseline, metric, tuple(guard))
    m = report["metric"]
    click.echo(f"baseline {baseline}: {m} {report['baseline_value']:.4f} (sampling seeds "
               f"{', '.join(map(str, report['seeds']))})")
    w = max([len("candidate")] + [len(r["model"]) for r in report["candidates"]])
    click.echo(f"{'candidate':<{w}} {m:>15} {'vs baseline [95%]':>30} {'lowest guard: upper end':>34}  eligible")
    for r in report["candidates"]:
        d, lo, hi = r["difference"]
        g = f"{r['worst_guard']} {r['worst_guard_interval'][2]:+.4f}" if r["worst_guard"] else "-"
        click.echo(f"{r['model']:<{w}} {r[m]:>15.4f} {d:>+9.4f} [{lo:>+8.4f}, {hi:>+8.4f}] {g:>34}  "
                   f"{'yes' if r['eligible'] else 'no'}")
    click.echo(f"pick: {report['pick']}" if report["pick"] else
               f"pick: none (no candidate beats {baseline} on {m} without a guarded metric measurably lower)")
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
