"""`genrl score`: reward-model scores (VQ, MQ, TA) for any videos on disk."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from ..errors import UsageError
from .options import OutputFolder, output_file, quiet_option

AXES = ("vq", "mq", "ta")


def _collect(paths: tuple[str, ...]) -> list[Path]:
    from ..io.video import VIDEO_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not any(p.glob("*.png")):
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES  # hidden: temp files, ._*
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise UsageError(f"{p}: folder holds no videos ({', '.join(VIDEO_SUFFIXES)}) or .png frames")
            out += found
        else:
            out.append(p)  # unreadable files are reported per file, not as a usage error
    return out


def _prompts_for(files: list[Path], prompt: str | None, prompts_file: str | None) -> list[str]:
    if bool(prompt) == bool(prompts_file):
        raise UsageError("give exactly one of --prompt TEXT or --prompts FILE (lines: path<TAB>prompt)")
    if prompt:
        return [prompt] * len(files)
    table: dict[str, str] = {}
    pf = Path(prompts_file)
    if not pf.is_file():
        raise UsageError(f"prompts file {pf} does not exist")
    for n, line in enumerate(pf.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if "\t" not in line:
            raise UsageError(f"{pf}:{n}: expected 'path<TAB>prompt'")
        path, text = line.split("\t", 1)
        table[str(Path(path))] = text.strip()
        table[Path(path).name] = text.strip()
    missing = [f for f in files if str(f) not in table and f.name not in table]
    if missing:
        raise UsageError(f"{pf}: no prompt for {missing[0]}")
    return [table.get(str(f), table.get(f.name)) for f in files]


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--prompt", default=None, help="One prompt for every video.")
@click.option("--prompts", "prompts_file", default=None, help="File of 'path<TAB>prompt' lines.")
@click.option("--reward", "reward_name", default="shapes", show_default=True, help="Reward backend: shapes, clip, videoreward or vlm.")
@click.option("--weights", default=None, help="Weights for the backend (name or path; default: its built-in).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--out", type=output_file(), default=None, help="Write the scores to this file instead of stdout.")
@click.option("--saliency", "saliency_dir", type=OutputFolder(), default=None,
              help="Also write per-axis saliency heat-map gifs (and a PNG of their mean) into this folder.")
@click.option("--batch", type=click.IntRange(1, 256), default=16, show_default=True, help="Videos scored at once.")
@quiet_option
def score(paths, prompt, prompts_file, reward_name, weights, fmt, out, saliency_dir, batch, quiet):
    """Score videos with a reward model: visual quality, motion quality, text alignment.

    PATHS are video files (mp4, webm, gif, ...), folders of videos (searched
    recursively, hidden files left out), or folders of PNG frames. `genrl sample
    --out-dir DIR` writes DIR/prompts.tsv for --prompts. Each backend reads frames its own way, at its own resolution
    (shapes: every frame at 32x32; clip: every frame at CLIP's size; videoreward:
    2 frames a second of the file's real frame rate within 448x448, as VideoAlign
    does), resizing while decoding. Scores are z-normalised with the model's stored
    statistics; `overall` is their mean (VideoAlign's own inference sums them). An axis
    a model cannot score is n/a (null in JSON) with a warning and left out of `overall`:
    motion of a clip shorter than 2 frames, text alignment of a prompt naming nothing the
    shapes reward knows. A file
    that cannot be read is listed with its error; the rest are still scored and
    the exit code is 1.

    \b
    Examples:
      genrl score samples/*.gif --prompt "a small red square moving left slowly on a dark background"
      genrl score clips/ --prompts prompts.tsv --format json --out scores.json
      genrl score videos/ --prompts videos/prompts.tsv --format csv --out scores.csv
      genrl score clip.mp4 --prompt "..." --saliency saliency/
    """
    import torch

    from ..registry import REWARDS

    from ..io.video import VideoReadError
    from ..progress import progress_bar

    files = _collect(paths)
    prompts = _prompts_for(files, prompt, prompts_file)
    model = REWARDS.get(reward_name)(**({"weights": weights} if weights else {}))
    rows: list[dict] = []
    not_scored: dict[tuple[str, str], int] = {}  # (axis, reason) -> videos with that axis reported as n/a
    with progress_bar(len(files), "score", quiet or len(files) < 4) as advance:
        for lo in range(0, len(files), batch):
            group = list(zip(files[lo : lo + batch], prompts[lo : lo + batch]))
            videos, ok = [], []
            for f, p in group:
                try:
                    videos.append(model.read_file(f))  # each backend's own frame rule and resolution
                    ok.append((f, p))
                except VideoReadError as e:
                    rows.append({"path": str(f), "prompt": p, "error": str(e)})
            for (f, p), v in zip(ok, videos):
                with torch.no_grad():
                    s = model.score_read(v, p)
                missing = model.unavailable(v, p)
                for item in missing.items():
                    not_scored[item] = not_scored.get(item, 0) + 1
                z = {a: float(s.z[a][0]) for a in AXES if a in s.z and a not in missing}
                rows.append({"path": str(f), "prompt": p, **{a: round(z[a], 4) if a in z else None for a in AXES},
                             "overall": round(sum(z.values()) / len(z), 4) if z else None, "frames": v.shape[0]})
                if saliency_dir:
                    _write_saliency(model, v, p, Path(saliency_dir), f)
            advance(len(group))
    names = {"vq": "visual quality", "mq": "motion quality", "ta": "text alignment"}
    for (axis, why), n in not_scored.items():
        click.echo(f"warning: {n} video(s) {why}: {names[axis]} is reported as n/a and left out of overall", err=True)
    order = {str(f): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: order[r["path"]])
    text = _render(rows, fmt)
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text, nl=False)
    failed = [r for r in rows if "error" in r]
    if failed:
        click.echo(f"error: {len(failed)} of {len(rows)} file(s) could not be read", err=True)
        return 1
    return 0


def _write_saliency(model, video, prompt: str, folder: Path, source: Path) -> None:
    import torch

    from ..io.grid import captioned_grid
    from ..io.video import write_video

    sal = model.saliency(video[None], [prompt])
    maps = []
    for a in AXES:
        m = sal[a][0]
        m = m / m.amax().clamp_min(1e-12)
        heat = torch_heat(m)  # (F, 3, H, W)
        maps.append(0.5 * video + 0.5 * heat)
    grid = captioned_grid(torch.stack([video, *maps]), ["video", *[f"{a} saliency" for a in AXES]], cols=4)
    write_video(folder / f"{source.stem}_saliency.gif", grid, fps=6)


def torch_heat(m):
    """(F, H, W) in [0, 1] -> a red-yellow heat map (F, 3, H, W)."""
    import torch

    return torch.stack((m.clamp(0, 1) * 1.0, (m * 2 - 1).clamp(0, 1), torch.zeros_like(m)), dim=1)


def _render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    cols = ["path", "prompt", *AXES, "overall", "error"]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    lines = [f"{'path':<40} {'vq':>7} {'mq':>7} {'ta':>7} {'overall':>8}"]
    for r in rows:
        name = r["path"] if len(r["path"]) <= 40 else "..." + r["path"][-37:]
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error']}")
        else:
            cells = " ".join(f"{r[a]:>7.3f}" if r[a] is not None else f"{'n/a':>7}" for a in AXES)
            overall = f"{r['overall']:>8.3f}" if r["overall"] is not None else f"{'n/a':>8}"
            lines.append(f"{name:<40} {cells} {overall}")
    return "\n".join(lines) + "\n"
