"""`genrl sweep`: the same distillation recipe over variants x seeds, evaluated alike, in one table.

Each run is an ordinary `genrl distill` run folder (``{out_dir}/{variant}/seed_{s}``)
followed by `genrl eval` into its ``eval.json``; a finished run is skipped, an
unfinished one resumes, so re-running the command after an interruption picks up
where it stopped. The summary (mean and spread over seeds per variant, and each
variant's paired difference to the baseline with a 95% bootstrap interval over
training seeds and videos) is written as ``results.md``, ``results.json``,
``results.csv`` and ``results.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..config import check
from ..errors import UsageError
from .options import config_command, quiet_option


@dataclass
class SweepEval:
    """How every run is evaluated."""

    split: str = "test"
    """World split whose prompts every run is evaluated on ('val' to choose a variant, 'test' to report it)."""
    num: int = 128
    """Held-out prompts per run."""
    frames: int = 0
    """Frames per video (0 = the world's clip length)."""
    rewards: list[str] = field(default_factory=lambda: ["shapes"])
    """Reward models averaged into each eval: the first is the one used in training; add held-out ones."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Sampling seeds: every run generates the same prompts once per seed (same noise across runs)."""
    baseline: str = ""
    """Variant every other one is compared with, paired video for video (empty = the first variant)."""


@dataclass
class SweepConfig:
    """`genrl sweep` plan."""

    out_dir: str = "runs/sweep"
    """Sweep folder: one run folder per variant and seed, plus the results files."""
    recipe: str = "configs/stream_r1.yaml"
    """The `genrl distill` config every run starts from."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every run (e.g. train.steps=150)."""
    seeds: list[int] = check(factory=lambda: [0, 1, 2], rule="nonempty")
    """train.seed of each run of a variant."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Variant name -> its key=value overrides (an empty list runs the recipe as is)."""
    eval: SweepEval = field(default_factory=SweepEval)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _metrics(report: dict, rewards: list[str]) -> dict[str, float]:
    out = {"prompt_accuracy": report["prompt_accuracy"]}
    for i, name in enumerate(rewards):
        tag = "" if i == 0 else f"{name}:"
        for axis, v in report["rewards"][name].items():
            out[f"{tag}{axis}"] = v
    return out


def step_seconds(rows: list[dict]) -> float | None:
    """Median wall time of a generator step in a run's metrics rows (the time column is cumulative)."""
    pts = [(r["step"], r["time"]) for r in rows if "loss" in r and "time" in r]
    per = sorted((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(pts, pts[1:]) if s1 > s0 and t1 > t0)
    return per[len(per) // 2] if per else None


def diagnostics(rows: list[dict], report: dict, reward: str) -> dict[str, float]:
    """What a run's weighting did, from its metrics rows and eval report: the effective batch of the rollout
    weights (mean over the logged steps, the lowest, and the means of the first and last quarter of the
    steps, so a drift over training shows), the share of the saliency mass on the object and the object's
    share of the pixels (Intra runs only), and the AUC of the training reward's overall score for
    probe-right over probe-wrong videos of the run's eval (how much the weights know about quality)."""
    out: dict[str, float] = {}
    ess = [r["rollout_ess"] for r in rows if "rollout_ess" in r]
    if ess:
        q = max(1, len(ess) // 4)
        out |= {"ess": sum(ess) / len(ess), "ess_min": min(ess), "ess_first_quarter": sum(ess[:q]) / q,
                "ess_last_quarter": sum(ess[-q:]) / q}
    for key in ("saliency_on_object", "object_area"):
        if vals := [r[key] for r in rows if key in r]:
            out[key] = sum(vals) / len(vals)
    if (auc := report.get("reward_probe_auc", {}).get(reward)) is not None:  # None: one class only
        out["reward_probe_auc"] = auc
    return out


def _per_video(report: dict, rewards: list[str]) -> dict[str, list[float]]:
    """Per-video values of every metric of :func:`_metrics`, in the eval's video order."""
    pv = report["per_video"]
    out = {"prompt_accuracy": [float(h) for h in pv["hit"]]}
    for i, name in enumerate(rewards):
        tag = "" if i == 0 else f"{name}:"
        for axis, vals in pv["rewards"][name].items():
            out[f"{tag}{axis}"] = vals
    return out


def paired(reports: dict[str, list[dict]], baseline: str, rewards: list[str], seed: int = 0) -> dict[str, dict]:
    """Variant -> metric -> (mean difference to the baseline, 95% low, 95% high), paired by training
    seed and video (the same prompts and sampling seeds), bootstrapped over both."""
    import torch

    from ..stats import paired_bootstrap

    base = [_per_video(r, rewards) for r in reports[baseline]]
    out = {}
    for variant, reps in reports.items():
        if variant == baseline:
            continue
        mine = [_per_video(r, rewards) for r in reps]
        out[variant] = {k: paired_bootstrap(torch.tensor([m[k] for m in mine]) - torch.tensor([b[k] for b in base]), seed=seed)
                        for k in base[0]}
    return out


def summarise(cfg: SweepConfig, reports: dict[str, list[dict]], steps: dict[str, list[float]],
              diags: dict[str, list[dict]] | None = None) -> dict:
    rewards = list(cfg.eval.rewards)
    table = {}
    diag_table = {}
    for variant, rows in (diags or {}).items():
        keys = [k for k in rows[0] if all(k in r for r in rows)] if rows else []
        diag_table[variant] = {k: _mean_std([r[k] for r in rows]) for k in keys}
    for variant, reps in reports.items():
        per_seed = [_metrics(r, rewards) for r in reps]
        table[variant] = {k: _mean_std([m[k] for m in per_seed]) for k in per_seed[0]}
        if steps.get(variant):
            table[variant]["step_seconds"] = _mean_std(steps[variant])
    baseline = cfg.eval.baseline or next(iter(reports))
    return {"seeds": list(cfg.seeds), "sampling_seeds": list(cfg.eval.seeds), "rewards": rewards, "variants": table,
            "baseline": baseline, "paired": paired(reports, baseline, rewards), "diagnostics": diag_table}


def write_results(cfg: SweepConfig, summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    variants = summary["variants"]
    keys = list(next(iter(variants.values())))
    lines = [f"Mean ± std over seeds {', '.join(map(str, summary['seeds']))}; rewards are mean z-scores "
             f"({summary['rewards'][0]} = the training reward"
             + (f"; {', '.join(summary['rewards'][1:])} held out" if len(summary["rewards"]) > 1 else "") + ").", "",
             "| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for v, row in variants.items():
        lines.append(f"| {v} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in keys) + " |")
    if summary.get("paired"):
        pkeys = list(next(iter(summary["paired"].values())))
        lines += ["", f"Paired difference to {summary['baseline']} (same training seeds, prompts and sampling seeds "
                  f"{', '.join(map(str, summary['sampling_seeds']))}), with a 95% bootstrap interval over training seeds "
                  "and videos; an interval holding 0 is no measured difference:", "",
                  "| variant | " + " | ".join(pkeys) + " |", "|---" * (len(pkeys) + 1) + "|"]
        for v, row in summary["paired"].items():
            lines.append(f"| {v} | " + " | ".join(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in (row[k] for k in pkeys)) + " |")
    if diag := summary.get("diagnostics"):
        dkeys = list(dict.fromkeys(k for row in diag.values() for k in row))
        lines += ["", "Training diagnostics (mean ± std over seeds): effective batch of the exp(beta r) rollout weights "
                  "(ess: mean over logged steps, its lowest, first and last quarter of training), saliency share on the "
                  f"object and the object's pixel share, and the AUC of {summary['rewards'][0]} for probe-right over "
                  "probe-wrong eval videos:", "",
                  "| variant | " + " | ".join(dkeys) + " |", "|---" * (len(dkeys) + 1) + "|"]
        for v, row in diag.items():
            lines.append(f"| {v} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "-"
                                                   for k in dkeys) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    csv = ["variant," + ",".join(f"{k}_mean,{k}_std" for k in keys)]
    csv += [f"{v}," + ",".join(f"{row[k][0]:.6g},{row[k][1]:.6g}" for k in keys) for v, row in variants.items()]
    (out / "results.csv").write_text("\n".join(csv) + "\n")
    _plot(summary, out / "results.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    keys = [k for k in next(iter(variants.values())) if k != "step_seconds"]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys), 2.8), dpi=100)
    for ax, k in zip(axes if len(keys) > 1 else [axes], keys):
        names = list(variants)
        ax.bar(range(len(names)), [variants[v][k][0] for v in names], yerr=[variants[v][k][1] for v in names],
               color=[f"C{i}" for i in range(len(names))], capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(k, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@config_command(SweepConfig)
@quiet_option
def sweep(cfg: SweepConfig, quiet: bool):
    """Run a distillation recipe over variants x seeds and tabulate the evals.

    Finished runs are skipped and unfinished ones resume, so the command can be
    re-run after an interruption. Results: {out_dir}/results.{md,json,csv,png}.

    \b
    Example (plain DMD vs Inter-only vs Intra-only vs Stream-R1, 5 training seeds):
      genrl sweep --config configs/experiments/stream_r1_ablation.yaml
    """
    from ..config import load_config
    from ..evaluation import evaluate_run
    from ..registry import RECIPES
    from ..train.trainer import read_metrics

    recipe = RECIPES.get("distill")

    if not cfg.variants:
        raise UsageError("config key 'variants' is empty: give at least one name -> list of key=value overrides")
    if not cfg.eval.seeds:
        raise UsageError("config key 'eval.seeds' is empty: give at least one sampling seed (two or more for a claim)")
    if cfg.eval.baseline and cfg.eval.baseline not in cfg.variants:
        raise UsageError(f"config key 'eval.baseline' is {cfg.eval.baseline!r}; valid: {', '.join(cfg.variants)}")
    if not Path(cfg.recipe).is_file():
        raise UsageError(f"config key 'recipe' is {cfg.recipe!r}, which is not a file")
    out = Path(cfg.out_dir)
    plan = [(v, s) for s in cfg.seeds for v in cfg.variants]  # seed-major: a cut-short sweep stays paired
    reports: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    steps: dict[str, list[float]] = {v: [] for v in cfg.variants}
    diags: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    for i, (variant, seed) in enumerate(plan, 1):
        run = out / variant / f"seed_{seed}"
        report_path = run / "eval.json"
        if not report_path.exists():
            click.echo(f"[{i}/{len(plan)}] {variant} seed {seed}: distill -> {run}", err=True)
            t0 = time.time()
            overrides = [*cfg.overrides, *cfg.variants[variant], f"out_dir={run}", f"train.seed={seed}", "eval_num=0"]
            recipe.run(load_config(recipe.config, cfg.recipe, overrides), quiet)
            report = evaluate_run(run, cfg.eval.num, list(cfg.eval.rewards), cfg.eval.split,
                                  cfg.eval.frames or None, list(cfg.eval.seeds), quiet)
            click.echo(f"[{i}/{len(plan)}] {variant} seed {seed}: prompt_accuracy={report['prompt_accuracy']:.4f} "
                       f"({time.time() - t0:.0f} s)", err=True)
        reports[variant].append(json.loads(report_path.read_text()))
        rows = read_metrics(run)
        diags[variant].append(diagnostics(rows, reports[variant][-1], cfg.eval.rewards[0]))
        if (sec := step_seconds(rows)) is not None:
            steps[variant].append(sec)
    summary = summarise(cfg, reports, steps, diags)
    write_results(cfg, summary, out)
    click.echo((out / "results.md").read_text(), nl=False)
