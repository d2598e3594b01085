"""`genrl env`: what this machine gives genrl, in one block to paste into a bug report."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import click

from .options import output_file

LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "open_clip_torch",
             "imageio-ffmpeg", "av", "trl")
"""Packages genrl runs on (the last three optional: PyAV for more video formats, TRL for its comparison test)."""
GPU_EXTRAS = ("flash-attn", "xformers", "deepspeed")
"""GPU-only packages genrl dispatches to when present (attention kernels) or names in its plans."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The git commit genrl runs from, when it runs from a checkout (an editable install)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else None


def report() -> dict:
    """Versions, devices and the choices genrl makes on this machine."""
    import torch

    from ..attention import resolve_backend
    from ..models.registry import ASSETS, BUILTIN
    from ..train.trainer import frozen_dtype

    gpus = [{"name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 1024**3, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    device = "cuda" if gpus else "cpu"
    q = torch.empty(1, 1, 1, 1, dtype=torch.bfloat16, device=device)  # what a bf16 training step hands attention
    attention = {"bf16, no mask": resolve_backend(q, None),
                 "bf16, with a mask": resolve_backend(q, torch.ones(1, 1, dtype=torch.bool, device=device))}
    return {
        "genrl": _version("genrl"), "commit": _commit(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": gpus, "bf16_supported": bool(gpus) and torch.cuda.is_bf16_supported(),
        "cpu_threads": torch.get_num_threads(),
        "libraries": {p: _version(p) for p in LIBRARIES},
        "gpu_extras": {p: _version(p) for p in GPU_EXTRAS},
        "attention_backend": attention,
        "frozen_dtype_auto": str(frozen_dtype("auto", torch.device(device)) or "each role's own").replace("torch.", ""),
        "builtin_models": {name: (ASSETS / file).is_file() for name, file in BUILTIN.items()},
        "assets": {"folder": str(ASSETS), "files": len(list(ASSETS.glob("*.safetensors"))),
                   "mb": round(sum(f.stat().st_size for f in ASSETS.glob("*.safetensors")) / 2**20, 1)},
    }


@click.command(name="env")
@click.option("--json", "json_path", type=output_file((".json",)), default=None, help="Also write the report as JSON.")
def env(json_path):
    """What this machine gives genrl: versions, GPUs, optional kernels, and the choices genrl makes here.

    Paste its output into a bug report. Nothing is downloaded and no model is loaded.

    \b
    Examples:
      genrl env
      genrl env --json env.json
    """
    r = report()
    lines = [f"genrl {r['genrl']}" + (f" at commit {r['commit']}" if r["commit"] else ""),
             f"python {r['python']} on {r['platform']}",
             f"torch {r['libraries']['torch']} (CUDA build {r['torch_cuda'] or 'none'}), {r['cpu_threads']} CPU threads",
             "GPUs: " + (", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in r["gpus"]) if r["gpus"] else "none"),
             "libraries: " + ", ".join(f"{p} {v or 'not installed'}" for p, v in r["libraries"].items() if p != "torch"),
             "GPU extras: " + ", ".join(f"{p} {v or 'not installed'}" for p, v in r["gpu_extras"].items()),
             "attention: " + ", ".join(f"{k} -> {v}" for k, v in r["attention_backend"].items()),
             f"frozen roles run in: {r['frozen_dtype_auto']} (train.frozen_dtype=auto)",
             f"built-in models: {sum(r['builtin_models'].values())} of {len(r['builtin_models'])} present"
             + "".join(f"; {n} MISSING" for n, ok in r["builtin_models"].items() if not ok)
             + f"; shipped weights: {r['assets']['files']} files, {r['assets']['mb']} MB, in {r['assets']['folder']}"]
    click.echo("\n".join(lines))
    if json_path:
        Path(json_path).write_text(json.dumps(r, indent=2) + "\n")
    return 0
