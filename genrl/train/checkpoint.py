"""Atomic, verifiable checkpoints.

A checkpoint is a folder ``checkpoints/step_XXXXXXX/`` holding safetensors
weights per module, ``state.pt`` (optimisers, schedulers, RNG, method state,
step) and ``manifest.json`` (step and sha256 of every file). It is written under
a temporary name and renamed into place, and ``checkpoints/latest`` is replaced
atomically afterwards, so a kill at any moment leaves either the previous
checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import UsageError


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors accepts: tensors that share storage (tied embeddings) are stored once each."""
    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``root/latest`` at it."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = []
    for module, sd in weights.items():
        save_file(_unshared(sd), str(tmp / f"{module}.safetensors"))
        files.append(f"{module}.safetensors")
    torch.save(state, tmp / "state.pt")
    files.append("state.pt")
    manifest = {"step": step, "files": {f: _sha256(tmp / f) for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _write_atomic_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.name != name)[: max(0, len(list(root.glob("step_*"))) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if path.exists() else None


def load_checkpoint(path: Path, verify: bool = True) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint folder: (step, weights per module, state)."""
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise UsageError(f"{path}: not a genrl checkpoint (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    if verify:
        for f, digest in manifest["files"].items():
            if not (path / f).exists() or _sha256(path / f) != digest:
                raise UsageError(f"{path / f}: checksum mismatch; the checkpoint is damaged")
    weights = {f[: -len(".safetensors")]: load_file(str(path / f)) for f in manifest["files"] if f.endswith(".safetensors")}
    state = torch.load(path / "state.pt", weights_only=False)
    return manifest["step"], weights, state
