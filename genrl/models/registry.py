"""One resolver from model names and paths to built models, used by every command.

A weights file is a safetensors file whose metadata carries the model kind and
its config, so a file alone rebuilds its model. Built-in names resolve to files
shipped in ``genrl/assets``; anything else is a path (a .safetensors file or a
run/checkpoint folder holding one). A diffusers Wan2.1 folder (or a genrl run folder
exported from one) loads as a :class:`~genrl.models.wan.WanVideoModel`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN: dict[str, str] = {
    "shapes-autoencoder": "shapes-autoencoder.safetensors",
    "shapes-teacher": "shapes-teacher.safetensors",
    "shapes-student-ode": "shapes-student-ode.safetensors",
    "shapes-student-ode-base": "shapes-student-ode-base.safetensors",  # where the shipped DMD/Stream-R1 students start
    "shapes-student-dmd": "shapes-student-dmd.safetensors",
    "shapes-student-stream-r1": "shapes-student-stream-r1.safetensors",
    "shapes-vlm-sft": "shapes-vlm-sft.safetensors",
    "shapes-vlm": "shapes-vlm.safetensors",
}
_KINDS: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {}


def register_kind(kind: str, config_cls: type, build: Callable[[Any], nn.Module]) -> None:
    _KINDS[kind] = (config_cls, build)


def model_metadata(module: nn.Module) -> dict[str, str]:
    """safetensors metadata (kind and config) of a module genrl knows how to rebuild; {} otherwise."""
    if "video_model" not in _KINDS:
        _register_defaults()
    cfg = getattr(module, "cfg", None)
    for kind, (config_cls, build) in _KINDS.items():
        if isinstance(build, type) and type(module) is build and isinstance(cfg, config_cls):
            return {"genrl_kind": kind, "genrl_config": json.dumps(dataclasses.asdict(cfg))}
    return {}


CHECKPOINT_PREFERENCE = ("ema", "student", "model", "policy", "reward", "autoencoder")
"""Which module of a checkpoint folder `--checkpoint` loads: the EMA (what runs export) first."""


def _checkpoint_weights(path: Path) -> Path:
    """The loadable weights file of a checkpoint folder (checkpoints/step_N)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"), key=lambda f: (
        CHECKPOINT_PREFERENCE.index(f.stem) if f.stem in CHECKPOINT_PREFERENCE else len(CHECKPOINT_PREFERENCE), f.name))
    for f in files:
        with safe_open(str(f), "pt") as h:
            if (h.metadata() or {}).get("genrl_kind"):
                return f
    raise UsageError(f"{path}: this checkpoint's weights carry no model config (written before genrl recorded one); "
                     f"load the run folder's model.safetensors instead")


def _register_defaults() -> None:
    from .autoencoder import Autoencoder, AutoencoderConfig
    from .video_model import VideoModel, VideoModelConfig
    from .vlm import TinyVLM, VLMConfig

    register_kind("autoencoder", AutoencoderConfig, Autoencoder)
    register_kind("video_model", VideoModelConfig, VideoModel)
    register_kind("vlm", VLMConfig, TinyVLM)
    from ..registry import load_plugins

    load_plugins()  # packages layered on genrl register their own kinds


def check_finite(state: dict, where: str) -> None:
    """Refuse to write weights holding NaN or inf (exit code 1): a poisoned file is worse than none."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            from ..errors import TrainingDiverged

            raise TrainingDiverged(f"{where}: weight {k!r} is not finite; nothing was written")


def save_weights(module: nn.Module, path: str | Path, kind: str, config: Any, dtype: torch.dtype | None = None,
                 weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``module``'s state (or ``weights``, its whole state dict when it is sharded) as safetensors with its
    kind and config in the metadata (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    weights = module.state_dict() if weights is None else weights
    check_finite(weights, str(path))
    for k, v in weights.items():
        v = v.detach().cpu().contiguous()
        state[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v.clone()
    meta = {"genrl_kind": kind, "genrl_config": json.dumps(dataclasses.asdict(config))}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def resolve_path(name_or_path: str) -> Path:
    """Built-in name or path -> the safetensors file to load."""
    if name_or_path in BUILTIN:
        path = ASSETS / BUILTIN[name_or_path]
        if not path.exists():
            raise UsageError(f"built-in model {name_or_path!r} has no weights in this install ({path} missing)")
        return path
    path = Path(name_or_path)
    if path.is_dir() and (path / "manifest.json").is_file():  # a checkpoint folder: checkpoints/step_N
        return _checkpoint_weights(path)
    if path.is_dir():
        for candidate in (path / "model.safetensors", *sorted(path.glob("*.safetensors"))):
            if candidate.exists():
                return candidate
        latest = path / "checkpoints" / "latest"
        if latest.exists():
            return resolve_path(str(path / "checkpoints" / latest.read_text().strip()))
        raise UsageError(f"{path}: folder holds no .safetensors weights")
    if not path.exists():
        known = ", ".join(BUILTIN)
        raise UsageError(f"model {name_or_path!r} is neither a built-in name ({known}) nor an existing path")
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: expected a .safetensors weights file")
    return path


def load_model(name_or_path: str, kind: str | None = None, device: str | torch.device = "cpu",
               overrides: dict | None = None) -> nn.Module:
    """Build and load the model a name or path refers to (float32, eval mode).

    ``overrides`` (e.g. height/width) apply to models whose config allows them (Wan2.1 folders).
    """
    if "video_model" not in _KINDS:
        _register_defaults()
    if kind in (None, "video_model") and name_or_path not in BUILTIN and Path(name_or_path).is_dir():
        from .wan import is_wan_folder, load_wan

        if is_wan_folder(name_or_path):  # a diffusers Wan2.1 folder or a genrl run folder exported from one
            return load_wan(name_or_path, overrides).to(device).eval()
    if overrides:
        raise UsageError(f"{name_or_path}: {', '.join(overrides)} can only be set for Wan2.1 models "
                         "(the shapes models generate 32x32 frames)")
    path = resolve_path(name_or_path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    found = meta.get("genrl_kind")
    if found not in _KINDS:
        raise UsageError(f"{path}: no genrl model metadata (kind {found!r}); was it written by genrl?")
    if kind is not None and found != kind:
        raise UsageError(f"{path}: holds a {found!r}, expected a {kind!r}")
    config_cls, build = _KINDS[found]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_cls), json.loads(meta["genrl_config"])))
    model = build(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    _load_strict(model, state, path)
    return model.to(device).eval()


def average_models(names: list[str]) -> nn.Module:
    """The uniform average of the weights of models that share one kind and config (a weight soup).

    Each name is anything :func:`load_model` takes; one name returns that model. Models fine-tuned from one
    start (training seeds of a recipe, checkpoints of a run) average meaningfully; the configs must match
    and integer buffers must agree, each mismatch one line naming it.
    """
    if not names:
        raise UsageError("nothing to average: name at least one model")
    models = [load_model(n) for n in names]
    first = model_metadata(models[0])
    if not first:
        raise UsageError(f"{names[0]}: not a genrl model with a config (a Wan2.1 folder cannot be averaged here)")
    states = [m.state_dict() for m in models]
    for name, model, state in zip(names[1:], models[1:], states[1:]):
        if model_metadata(model) != first:
            raise UsageError(f"{name}: a different model kind or config than {names[0]}; only models of one "
                             f"architecture can be averaged")
        for k, v in states[0].items():
            if not v.is_floating_point() and not torch.equal(v, state[k]):
                raise UsageError(f"{name}: buffer {k!r} differs from {names[0]}'s; integer buffers must agree")
    avg = {k: (torch.stack([s[k] for s in states]).mean(dim=0) if v.is_floating_point() else v)
           for k, v in states[0].items()}
    models[0].load_state_dict(avg)
    return models[0]


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, with a mismatch named in one line (the first key and what differs)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing:
        raise UsageError(f"{path}: weights do not match their config: key {missing[0]!r} is missing "
                         f"({len(missing)} missing in all)")
    if unexpected:
        raise UsageError(f"{path}: weights do not match their config: unexpected key {unexpected[0]!r} "
                         f"({len(unexpected)} unexpected in all)")
    if shapes:
        k = shapes[0]
        raise UsageError(f"{path}: weights do not match their config: key {k!r} has shape "
                         f"{tuple(state[k].shape)}, the config builds {tuple(own[k].shape)}")
    model.load_state_dict(state)
