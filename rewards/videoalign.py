"""VideoAlign's VideoReward release -> a transformers folder genrl loads, every tensor accounted for.

The release is ``model_config.json`` (data, model, LoRA and inference settings)
and ``checkpoint-N/`` holding either ``model.pth`` (the state of the whole
PEFT-wrapped model) or ``adapter_model.safetensors`` + ``non_lora_state_dict.pth``
(the LoRA pairs, and the trained tensors that are not LoRA; the rest comes from
the base Qwen2-VL). Keys carry PEFT's prefix (``base_model.model.``), LoRA pairs
(``lora_A`` / ``lora_B``, or ``lora_embedding_A`` / ``_B`` for embeddings, with or
without the adapter name) beside ``base_layer`` weights, and ``modules_to_save``
copies; the Qwen2-VL part may be in transformers' older layout (``visual.*``,
``model.*``) or the newer one (``model.visual.*``, ``model.language_model.*``).

Conversion strips the prefix, merges each LoRA pair into its weight
(``W + s B A`` with ``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA), keeps the
trained copy of a module saved whole, maps keys to the installed layout and
checks that every tensor of the target model is given exactly once: a missing or
unexpected key is one line naming it. ``.pth`` files are read with
``torch.load(weights_only=True)``; nothing is unpickled otherwise.

The trained prompt template is not in the release: it is read from a VideoAlign
source checkout's ``prompt_template.py`` (parsed, never executed) or a text file.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from genrl.errors import UsageError
from genrl.registry import CONVERTERS

from .videoreward import SETTINGS_FILE, SPECIAL_TOKENS

PREFIX = "base_model.model."
LORA = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[^.]+)?(\.weight)?$")


# -------------------------------------------------------------------- reading
def read_release_config(src: Path) -> dict:
    path = src / "model_config.json"
    if not path.is_file():
        raise UsageError(f"{src}: no model_config.json (a VideoAlign release folder has model_config.json and checkpoint-N/)")
    return json.loads(path.read_text())


def checkpoint_dir(src: Path, step: int | None = None) -> Path:
    found = sorted(src.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    if not found:
        raise UsageError(f"{src}: no checkpoint-N/ folder")
    if step is None:
        return found[-1]
    path = src / f"checkpoint-{step}"
    if not path.is_dir():
        raise UsageError(f"{src}: no checkpoint-{step}/ (found {', '.join(p.name for p in found)})")
    return path


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refuse anything that is not plain tensors
        raise UsageError(f"{path}: not a plain tensor file that loads with weights_only=True ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: expected a dict of tensors")
    return state


def read_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state, complete): complete when it is a whole model (model.pth), not LoRA + trained tensors."""
    if (ckpt / "model.pth").is_file():
        return _torch_load(ckpt / "model.pth"), True
    lora, rest = ckpt / "adapter_model.safetensors", ckpt / "non_lora_state_dict.pth"
    if not lora.is_file():
        raise UsageError(f"{ckpt}: neither model.pth nor adapter_model.safetensors")
    from safetensors.torch import load_file

    state = dict(load_file(str(lora)))
    if rest.is_file():
        state.update(_torch_load(rest))
    return state, False


def read_template(videoalign_src: str = "", template_file: str = "", kind: str = "detailed_special") -> str:
    """The trained prompt template, from a VideoAlign checkout (parsed, not executed) or a text file."""
    if template_file:
        path = Path(template_file)
        if not path.is_file():
            raise UsageError(f"template file {path} does not exist")
        return path.read_text()
    path = Path(videoalign_src) / "prompt_template.py"
    if not videoalign_src or not path.is_file():
        raise UsageError("VideoReward was trained with VideoAlign's prompt template, which its release does not hold: "
                         "give --videoalign-src DIR (a VideoAlign checkout with prompt_template.py) or --template FILE")
    names = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN", "detailed": "DETAILED_PROMPT", "simple": "SIMPLE_PROMPT"}
    want = names.get(kind)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == want for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    raise UsageError(f"{path}: no string constant {want} for template type {kind!r}")


# -------------------------------------------------------------------- merging
def _strip(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Strip PEFT's prefix; plain weights (base layers and trained module copies) apart from LoRA pairs."""
    plain, pairs = {}, {}
    for key, value in state.items():
        key = _strip(key)
        m = LORA.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["kind"]] = value
        elif ".original_module." in key:
            continue  # the untrained copy beside modules_to_save
        else:
            plain[re.sub(r"\.modules_to_save\.[^.]+\.", ".", key).replace(".base_layer.", ".")] = value
    return plain, pairs


def fold_lora(plain: dict[str, torch.Tensor], pairs: dict[str, dict[str, torch.Tensor]], scale: float) -> dict[str, torch.Tensor]:
    """Merge each LoRA pair into its weight: W + scale * B A (embeddings: W + scale * (B A)^T)."""
    out = dict(plain)
    for module, p in pairs.items():
        if "lora_A" in p:  # Linear: W (out, in) += s B (out, r) A (r, in)
            delta = scale * (p["lora_B"].float() @ p["lora_A"].float())
        else:  # Embedding: W (num, dim) += s (B (dim, r) A (r, num))^T
            delta = scale * (p["lora_embedding_B"].float() @ p["lora_embedding_A"].float()).T
        weight = f"{module}.weight"
        if weight not in out:
            raise UsageError(f"LoRA pair for {module!r} has no base weight {weight!r}")
        out[weight] = (out[weight].float() + delta).to(out[weight].dtype)
    return out


def lora_scale(lora: dict) -> float:
    r, alpha = lora.get("lora_r", 16), lora.get("lora_alpha", 32)
    return alpha / (math.sqrt(r) if lora.get("use_rslora") else r)


def current_key(key: str, target_keys: set[str]) -> str:
    """An older transformers Qwen2-VL key (visual.*, model.*) in the installed layout."""
    if key in target_keys or key == "rm_head.weight" or key.startswith(("model.visual.", "model.language_model.")):
        return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


# ------------------------------------------------------------------ converting
def convert(src: str | Path, dst: str | Path, base: str | Path, videoalign_src: str = "", template_file: str = "",
            step: int | None = None) -> Path:
    """Write a transformers folder + genrl_videoreward.json that `videoreward(weights=dst)` loads."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from transformers.utils import logging

    logging.disable_progress_bar()
    src, dst, base = Path(src), Path(dst), Path(base)
    cfg = read_release_config(src)
    data, model_cfg, lora, inference = (cfg.get(k) or {} for k in ("data_config", "model_config", "peft_lora_config", "inference_config"))
    template = read_template(videoalign_src, template_file, data.get("prompt_template_type", "detailed_special"))
    if not (base / "config.json").is_file():
        raise UsageError(f"{base}: not a local Qwen2-VL folder (the release's base, {model_cfg.get('model_name_or_path', '?')})")
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    config = Qwen2VLConfig.from_pretrained(str(base), local_files_only=True)
    config.get_text_config().vocab_size = len(tokenizer)  # the three reward tokens added
    if hasattr(config, "vocab_size"):
        config.vocab_size = len(tokenizer)
    with torch.device("meta"):
        target = Qwen2VLForConditionalGeneration(config)
    target_state = dict(target.state_dict())
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(config.get_text_config(), "tie_word_embeddings", False))

    state, complete = read_checkpoint(checkpoint_dir(src, step))
    plain, pairs = split_state(state)
    keys = set(target_state)
    plain = {current_key(k, keys): v for k, v in plain.items()}
    pairs = {current_key(f"{m}.weight", keys)[: -len(".weight")]: p for m, p in pairs.items()}
    if pairs and not lora.get("lora_enable"):
        raise UsageError(f"{src}: the checkpoint holds LoRA weights but model_config.json has lora_enable false")
    head = plain.pop("rm_head.weight", None)
    if head is None:
        raise UsageError(f"{src}: the checkpoint holds no rm_head.weight (the reward head)")
    if not complete:  # LoRA + trained tensors: the untouched rest comes from the base model
        plain = {**_base_state(base, tokenizer), **plain}
    state = fold_lora(plain, pairs, lora_scale(lora))
    if tied:
        state.pop("lm_head.weight", None)
    expected = {k for k in target_state if not (tied and k == "lm_head.weight")}
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if unexpected:
        raise UsageError(f"{src}: unexpected key {unexpected[0]!r} in the checkpoint ({len(unexpected)} in all)")
    if missing:
        raise UsageError(f"{src}: missing key {missing[0]!r} ({len(missing)} in all)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(target_state[k].shape):
            raise UsageError(f"{src}: {k!r} has shape {tuple(v.shape)}, the model expects {tuple(target_state[k].shape)}")
    output_dim = int(model_cfg.get("output_dim", head.shape[0]))
    if head.shape[0] != output_dim:
        raise UsageError(f"{src}: rm_head has {head.shape[0]} outputs, model_config.json says {output_dim}")

    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(dst))
    tokenizer.save_pretrained(str(dst))
    tensors = {k: v.contiguous() for k, v in state.items()}
    tensors["rm_head.weight"] = head.contiguous()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    settings = {
        "prompt_template": template,
        "output_dim": output_dim,
        "mean": {a: float(inference.get(f"{a.upper()}_mean", 0.0)) for a in ("vq", "mq", "ta")},
        "std": {a: float(inference.get(f"{a.upper()}_std", 1.0)) for a in ("vq", "mq", "ta")},
        "vision": {"fps": float(data.get("fps") or 2.0), "max_pixels": int(data.get("max_frame_pixels") or 448 * 448)},
    }
    (dst / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return dst


def _base_state(base: Path, tokenizer) -> dict[str, torch.Tensor]:
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return dict(model.state_dict())


# -------------------------------------------------------------------- loading
def load_converted(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, rm_head) from a converted folder; any key out of place is one line."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import importlib.util

    config = Qwen2VLConfig.from_pretrained(str(path), local_files_only=True)
    fast = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    config._attn_implementation = "flash_attention_2" if fast and dtype != torch.float32 else "sdpa"
    model = Qwen2VLForConditionalGeneration(config)
    state = load_file(str(path / "model.safetensors"))
    head_w = state.pop("rm_head.weight", None)
    if head_w is None:
        raise UsageError(f"{path / 'model.safetensors'}: no rm_head.weight (the reward head)")
    own = model.state_dict()
    tied = "lm_head.weight" not in state and getattr(config.get_text_config(), "tie_word_embeddings", False)
    expected = {k for k in own if not (tied and k == "lm_head.weight")}
    for kind, keys in (("unexpected", sorted(set(state) - expected)), ("missing", sorted(expected - set(state)))):
        if keys:
            raise UsageError(f"{path / 'model.safetensors'}: {kind} key {keys[0]!r} ({len(keys)} in all)")
    model.load_state_dict(state, strict=False)
    if tied:
        model.tie_weights()
    head = nn.Linear(head_w.shape[1], head_w.shape[0], bias=False)
    head.weight.data.copy_(head_w)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(dtype), tokenizer, head.to(dtype)


CONVERTERS.register("videoreward", convert)
