"""Run reports: a markdown page with plots of what a training run did.

Every training command writes ``report.md`` (+ ``plots/*.png``) into its run
folder at the end: losses and gradient norms, any reward axes, per-frame
temporal weights, sample accuracy, and the figures of any ``eval*.json`` in the
folder. `genrl report RUN` rebuilds it at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

from .train.trainer import read_metrics

GROUPS = {
    "losses": ("loss", "critic_loss"),
    "gradient norms": ("grad_norm", "critic_grad_norm", "dmd_grad_norm"),
    "reward per axis (z)": ("reward_vq", "reward_mq", "reward_ta", "reward_r"),
    "rollout weights": ("rollout_weight_min", "rollout_weight_max", "rollout_weights_clamped"),
    "sample prompt accuracy": ("sample_prompt_accuracy",),
    "validation prompt accuracy": ("val_prompt_accuracy", "val_prompt_accuracy_seed0", "val_prompt_accuracy_seed1"),
    "held-out pair accuracy": ("vq_accuracy", "mq_accuracy", "ta_accuracy"),
    "held-out QA accuracy": ("heldout_accuracy", "val_accuracy"),
    "held-out QA accuracy per question type": tuple(f"{p}_{t}" for p in ("heldout", "val")
                                                    for t in ("colour", "shape", "size", "direction", "speed", "count")),
    "rollout rewards": ("reward", "reward_accuracy", "reward_format"),
    "KL to the reference": ("kl",),
}


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot(rows: list[dict], title: str, keys: tuple[str, ...], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for k in present:
        x, y = _series(rows, k)
        ax.plot(x, y, label=k, marker="o" if len(x) < 12 else None, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _temporal_plot(rows: list[dict], path: Path) -> bool:
    keys = sorted({k for r in rows for k in r if k.startswith("temporal_w")}, key=lambda k: int(k[10:]))
    return _plot(rows, "temporal weight per latent frame", tuple(keys), path) if keys else False


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` with plots for a run folder; returns its path."""
    run = Path(run_dir)
    rows = read_metrics(run)
    lines = [f"# Run report: {run.name}", ""]
    evals = sorted(run.glob("eval*.json"))
    if evals:
        lines += ["## Evaluation", "", "| file | metric | value |", "|---|---|---|"]
        for e in evals:
            data = json.loads(e.read_text())
            for k, v in _flatten(data).items():
                if isinstance(v, (int, float)):
                    lines.append(f"| {e.name} | {k} | {v:.4g} |")
        lines.append("")
    best = run / "best" / "best.json"
    if best.exists():  # train.val_every: the step chosen on val
        b = json.loads(best.read_text())
        lines += ["## Best on val", "", f"step {b['step']}: {b['key']} = {b['value']:.4f}, exported to `best/`", ""]
    if rows:
        last = [r for r in rows if "loss" in r]
        if last:
            lines += ["## Final step", "", "```", json.dumps(last[-1], indent=1), "```", ""]
        periodic = [r for r in rows if "loss" not in r and len(r) > 2]  # sample / held-out figures
        if periodic:
            lines += [f"## Last periodic evaluation (step {periodic[-1]['step']})", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" for k, v in periodic[-1].items()
                      if k not in ("step", "time") and isinstance(v, (int, float))]
            lines.append("")
        lines += ["## Plots", ""]
        for title, keys in GROUPS.items():
            name = title.split(" (")[0].replace(" ", "_") + ".png"
            if _plot(rows, title, keys, run / "plots" / name):
                lines.append(f"![{title}](plots/{name})")
        if _temporal_plot(rows, run / "plots" / "temporal_weights.png"):
            lines.append("![temporal weights](plots/temporal_weights.png)")
        lines.append("")
    samples = sorted((run / "samples").glob("*.gif"))
    if samples:
        lines += ["## Samples", "", f"![last samples](samples/{samples[-1].name})", ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
