"""Video files <-> float tensors (F, C, H, W) in [0, 1].

Reads mp4, webm, gif (anything imageio's ffmpeg or pillow plugins decode) and
folders of PNG frames; writes mp4 and gif. Every failure is a
:class:`VideoReadError` naming the file, so CLIs can report it in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
WRITE_SUFFIXES = (".mp4", ".gif")


class VideoReadError(UsageError, ValueError):
    """A video that cannot be read; the message names the file."""


def is_video_path(path: Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in VIDEO_SUFFIXES or (path.is_dir() and any(path.glob("*.png")))


def read_video(path: str | Path) -> torch.Tensor:
    """Decode a video file or a folder of PNG frames into (F, C, H, W) float in [0, 1]."""
    path = Path(path)
    frames = _read_png_folder(path) if path.is_dir() else _read_file(path)  # _read_file reports a missing path
    if not frames:
        raise VideoReadError(f"{path}: contains no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"{path}: frames differ in size ({sorted(shapes)[:2]} ...)")
    arr = np.stack(frames)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return torch.from_numpy(arr.astype(np.float32) / scale).permute(0, 3, 1, 2).contiguous()


DEFAULT_FPS = 8.0
"""Frame rate assumed for a folder of PNG frames (no metadata to read it from)."""


def _iter_frames(path: Path):
    """Decoded frames (H, W, 3) uint8, one at a time."""
    import imageio.v3 as iio

    if path.is_dir():
        for f in _png_files(path):
            yield _rgb(_read_png(f))
        return
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".gif":
            for f in iio.imiter(path, plugin="pillow", mode="RGB"):
                yield _rgb(np.asarray(f))
        else:
            for f in iio.imiter(path, plugin="pyav" if _has_pyav() else "FFMPEG"):
                yield _rgb(np.asarray(f))
    except VideoReadError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise VideoReadError(f"{path}: cannot decode as video ({_short(e)})") from None


def _rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    frame = frame[..., :3]
    return (frame / 257).astype(np.uint8) if frame.dtype == np.uint16 else frame.astype(np.uint8)


def video_info(path: str | Path) -> tuple[int, float]:
    """(frame count, frames per second) of a video file or PNG folder, decoding without keeping frames."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    fps = DEFAULT_FPS
    if path.is_file():
        _check_file(path)
        try:
            if path.suffix.lower() == ".gif":
                duration = iio.immeta(path, plugin="pillow").get("duration") or 0
                fps = 1000.0 / duration if duration else DEFAULT_FPS
            else:
                fps = float(iio.immeta(path, plugin="pyav" if _has_pyav() else "FFMPEG").get("fps") or DEFAULT_FPS)
        except Exception as e:  # noqa: BLE001
            raise VideoReadError(f"{path}: cannot read video metadata ({_short(e)})") from None
    count = sum(1 for _ in _iter_frames(path))
    if not count:
        raise VideoReadError(f"{path}: contains no frames")
    return count, fps


def read_resized(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """Every frame, resized to ``size`` (area) as it is decoded: (F, 3, h, w) float in [0, 1].

    Memory grows with F x h x w, never with the source resolution: each decoded frame goes
    through one reused float buffer and lands in preallocated blocks of the output, so the
    allocator never splits a freed full-size frame around a small kept one (which grew the
    heap by one full-size frame per frame before).
    """
    import torch.nn.functional as F

    size = tuple(size)
    blocks: list[torch.Tensor] = []
    buf: torch.Tensor | None = None
    n = _BLOCK
    for frame in _iter_frames(Path(path)):
        src = torch.from_numpy(frame).permute(2, 0, 1)
        if buf is None or buf.shape[1:] != src.shape:
            buf = torch.empty((1, *src.shape))
        buf[0].copy_(src).div_(255)
        if n == _BLOCK:
            blocks.append(torch.empty((_BLOCK, 3, *size)))
            n = 0
        blocks[-1][n] = buf[0] if tuple(buf.shape[-2:]) == size else F.interpolate(buf, size=size, mode="area")[0]
        n += 1
    if not blocks:
        raise VideoReadError(f"{path}: contains no frames")
    blocks[-1] = blocks[-1][:n]
    return blocks[0].clone() if len(blocks) == 1 else torch.cat(blocks)


_BLOCK = 256
"""Frames per preallocated block of :func:`read_resized`'s output."""


def read_frames(path: str | Path, indices: list[int]) -> torch.Tensor:
    """Only the frames at ``indices`` (sorted, distinct or not) as (F, 3, H, W) uint8; memory grows with F only."""
    path = Path(path)
    want: dict[int, int] = {}
    for i in indices:
        want[i] = want.get(i, 0) + 1
    kept: dict[int, np.ndarray] = {}
    for i, frame in enumerate(_iter_frames(path)):
        if i in want:
            kept[i] = frame
        if len(kept) == len(want):
            break
    missing = [i for i in want if i not in kept]
    if missing:
        raise VideoReadError(f"{path}: has no frame {missing[0]}")
    return torch.from_numpy(np.stack([kept[i] for i in indices])).permute(0, 3, 1, 2).contiguous()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoReadError(f"{path}: unsupported video type {suffix or '(none)'}; valid: {', '.join(VIDEO_SUFFIXES)}")


def _png_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.png"))
    if not files:
        raise VideoReadError(f"{path}: folder holds no .png frames")
    return files


def _read_png(f: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        return iio.imread(f)
    except Exception as e:  # noqa: BLE001 - any decoder error is a bad frame
        raise VideoReadError(f"{f}: not a readable PNG frame ({_short(e)})") from None


def _read_png_folder(path: Path) -> list[np.ndarray]:
    return [_read_png(f) for f in _png_files(path)]


def _read_file(path: Path) -> list[np.ndarray]:
    import imageio.v3 as iio

    _check_file(path)
    suffix = path.suffix.lower()
    plugin = "pillow" if suffix == ".gif" else "pyav" if _has_pyav() else "FFMPEG"
    try:
        if plugin == "pillow":
            arr = iio.imread(path, index=None, plugin="pillow", mode="RGB")
            frames = list(arr) if arr.ndim == 4 else [arr]
        else:
            frames = [np.asarray(f) for f in iio.imiter(path, plugin=plugin)]
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise VideoReadError(f"{path}: cannot decode as video ({_short(e)})") from None
    return frames


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:160]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, C, H, W) in [0, 1] -> (F, H, W, C) uint8."""
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video (F, C, H, W) with C in (1, 3), got {tuple(video.shape)}")
    arr = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def write_video(path: str | Path, video: torch.Tensor, fps: int = 8) -> Path:
    """Write (F, C, H, W) in [0, 1] as .mp4 or .gif (chosen by suffix). Writes atomically."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: can write {', '.join(WRITE_SUFFIXES)}, not {suffix or '(no suffix)'}")
    arr = to_uint8(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    if suffix == ".gif":
        iio.imwrite(tmp, arr, plugin="pillow", duration=int(1000 / fps), loop=0)
    else:
        h, w = arr.shape[1:3]
        arr = np.pad(arr, ((0, 0), (0, (-h) % 16), (0, (-w) % 16), (0, 0)), mode="edge") if (h % 16 or w % 16) else arr
        iio.imwrite(tmp, arr, plugin="FFMPEG", fps=fps, codec="libx264", quality=9, macro_block_size=16)
    tmp.replace(path)
    return path


def upscale(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of (..., H, W) so tiny clips are visible."""
    return video.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) if factor > 1 else video
