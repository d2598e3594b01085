"""Atomic, verifiable checkpoints.

A checkpoint is a folder ``checkpoints/step_XXXXXXX/`` holding safetensors
weights per module, ``state.pt`` (optimisers, schedulers, RNG, method state,
step) and ``manifest.json`` (step and sha256 of every file). It is written under
a temporary name and renamed into place, and ``checkpoints/latest`` is replaced
atomically afterwards, so a kill at any moment leaves either the previous
checkpoint or the new one, never a half-written one.

Resume takes the newest *intact* checkpoint (every file present with its
recorded checksum), warning about each damaged one it passes over; rotation
counts only intact checkpoints, so it never deletes the last good one.
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


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                    keep: int = 2, metadata: dict[str, dict[str, str]] | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``root/latest`` at it.

    ``metadata`` (per module) goes into each safetensors header, so `--checkpoint` can rebuild the model."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = []
    for module, sd in weights.items():
        save_file(_unshared(sd), str(tmp / f"{module}.safetensors"), metadata=(metadata or {}).get(module) or None)
        files.append(f"{module}.safetensors")
    torch.save(state, tmp / "state.pt")
    files.append("state.pt")
    manifest = {"step": step, "files": {f: _sha256(tmp / f) for f in files},
                "sizes": {f: (tmp / f).stat().st_size for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _write_atomic_text(root / "latest", name + "\n")
    _rotate(root, keep)
    return final


def _step_folders(root: Path) -> list[Path]:
    """``step_*`` folders under ``root``, newest first."""
    found = []
    for p in root.glob("step_*") if root.is_dir() else ():
        tail = p.name[len("step_"):]
        if p.is_dir() and tail.isdigit():
            found.append((int(tail), p))
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_problem(path: Path, verify: bool = True) -> str | None:
    """Why checkpoint folder ``path`` cannot be loaded, or None when it is intact.

    ``verify`` compares every file's sha256 with the manifest; without it only presence
    and sizes are checked (cheap enough to run on every save)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files, _ = dict(manifest["files"]), int(manifest["step"])
    except FileNotFoundError:
        return "no manifest.json"
    except (ValueError, KeyError, TypeError):
        return "manifest.json is damaged"
    for f, digest in files.items():
        if not (path / f).is_file():
            return f"{f} is missing"
        size = manifest.get("sizes", {}).get(f)
        if size is not None and (path / f).stat().st_size != size:
            return f"{f} has {(path / f).stat().st_size} bytes, {size} were written"
        if verify and _sha256(path / f) != digest:
            return f"{f}: checksum mismatch"
    return None


def _rotate(root: Path, keep: int) -> None:
    """Delete checkpoints older than the ``keep`` newest intact ones (damaged ones never count)."""
    intact = 0
    for p in _step_folders(root):
        if intact >= keep:
            shutil.rmtree(p, ignore_errors=True)
        elif checkpoint_problem(p, verify=False) is None:
            intact += 1


def latest_checkpoint(root: Path) -> Path | None:
    """Where ``root/latest`` points, if that folder exists."""
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if path.exists() else None


def resumable_checkpoint(root: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint under ``root`` and a warning for each damaged or missing newer one.

    ``(None, [])`` when ``root`` holds no checkpoints at all (a fresh run). When it held some but
    none is intact, raises instead of letting the run restart from step 0 over them."""
    warnings = []
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else ""
    if named and not (root / named).is_dir():
        warnings.append(f"{pointer} names {named}, which is missing")
    folders = _step_folders(root)
    for p in folders:
        problem = checkpoint_problem(p)
        if problem is None:
            return p, warnings
        warnings.append(f"skipping damaged checkpoint {p}: {problem}")
    if folders or named:
        raise UsageError(f"{root}: no intact checkpoint to resume from ({'; '.join(warnings)}); "
                         "move the folder away to start over")
    return None, []


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def mapped_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as views of the file mapped into memory (copy-on-write): nothing is read
    until a tensor's bytes are touched, and processes mapping the same file share the pages they read. A
    process that keeps a slice of each tensor (its shards) reads only those bytes."""
    import mmap
    import struct

    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # the mapping outlives the file handle
    start = 8 + size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, (begin, end) = _SAFETENSORS_DTYPES[info["dtype"]], info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin) if count else torch.empty(0, dtype=dtype)
        out[name] = flat.view(info["shape"])
    return out


def load_checkpoint(path: Path, verify: bool = True,
                    mapped: bool = False) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint folder: (step, weights per module, state). ``mapped``: the weights and the state's
    tensors are views of the files mapped into memory, read as they are touched (:func:`mapped_safetensors`,
    ``torch.load(mmap=True)``): a process keeping only its shards of them reads only those."""
    problem = checkpoint_problem(path, verify)
    if problem == "no manifest.json":
        raise UsageError(f"{path}: not a genrl checkpoint (no manifest.json)")
    if problem is not None:
        raise UsageError(f"{path}: the checkpoint is damaged ({problem})")
    manifest = json.loads((path / "manifest.json").read_text())
    read = mapped_safetensors if mapped else lambda p: load_file(str(p))
    weights = {f[: -len(".safetensors")]: read(path / f) for f in manifest["files"] if f.endswith(".safetensors")}
    state = torch.load(path / "state.pt", weights_only=False, mmap=mapped)
    return manifest["step"], weights, state
