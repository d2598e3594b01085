"""`genrl plan`: parameters and memory of a recipe's roles, before anything is loaded."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import click

from ..errors import UsageError
from .options import output_file


@contextmanager
def _env_placeholders(config: str | None):
    """Unset ``${oc.env:NAME}`` variables read as empty while planning (a plan needs no machine paths)."""
    from ..config import ENV_VAR

    names = set(ENV_VAR.findall(Path(config).read_text())) if config and Path(config).is_file() else set()
    missing = [n for n in names if n not in os.environ]
    for n in missing:
        os.environ[n] = ""
    try:
        yield missing
    finally:
        for n in missing:
            os.environ.pop(n, None)


def _gb(n: float) -> str:
    return f"{n / 1024**3:.1f} GB"


@click.command(context_settings={"show_default": True})
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="A `genrl distill` or `genrl grpo` recipe.")
@click.option("--gpus", type=click.IntRange(1, 4096), default=1, help="GPUs the run would use.")
@click.option("--gpu-memory", default="80GB", help="Memory of one GPU (e.g. 80GB, 141GB).")
@click.option("--json", "json_path", type=output_file((".json",)), default=None, help="Also write the plan as JSON.")
@click.option("--arch", default="", metavar="NAME", show_default=False,
              help="A grpo recipe's policy architecture when grpo.policy is not a folder on this machine "
                   "(qwen2-vl-2b, qwen2-vl-7b, qwen2.5-vl-3b, qwen2.5-vl-7b).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar while the passes are measured.")
def plan(overrides, config_path, gpus, gpu_memory, json_path, arch, quiet):
    """Parameters and memory per role of a distillation or GRPO recipe, and what fits on your GPUs.

    Builds every role's architecture on the meta device (a local folder's config, or the
    preset named under `arch:` when the folder is not on this machine): nothing is
    downloaded. Trainable roles count float32 weights, gradients and AdamW moments; frozen
    roles their bfloat16 weights. Activations are measured: the student's streamed rollout
    and the critic's pass run on the CPU at full width but 2 blocks and a few tokens a
    frame (seconds, a few GB of memory), and what they keep for backward is extrapolated
    to the real depth and frame size. Stream-R1 with VideoReward saliency adds the reward
    model's pass over the rollouts with gradients to their pixels, held beside the
    student's (its vision tower and language model measured the same way).

    A `grpo` recipe with a transformers Qwen2-VL / Qwen2.5-VL policy gets the policy and
    its KL reference, the KV cache of a step's sampling, and what one scoring pass keeps
    for backward (measured the same way), as configured, with activation checkpointing
    and with one question's group a pass (train.grad_accum).

    \b
    Examples:
      genrl plan --config configs/stream_r1_wan.yaml
      genrl plan --config configs/stream_r1_wan.yaml --gpus 8 --gpu-memory 80GB
      genrl plan --config configs/stream_r1_wan.yaml arch.teacher=wan2.1-t2v-14b arch.critic=wan2.1-t2v-1.3b
      genrl plan --config configs/grpo_video_qa.yaml --arch qwen2-vl-7b grpo.policy_dtype=bfloat16 grpo.qa.frames=32
    """
    from ..config import load_config
    from ..plan import parse_memory, plan_distill
    from ..registry import RECIPES

    DistillConfig = RECIPES.get("distill").config

    gpu_bytes = parse_memory(gpu_memory)
    from ..policy_plan import is_grpo_recipe

    if is_grpo_recipe(config_path):
        return _plan_grpo(config_path, overrides, arch, gpus, gpu_bytes, json_path, quiet)
    if arch:
        raise UsageError("--arch names a grpo recipe's policy; a distillation recipe names its roles' "
                         "architectures with arch.teacher=, arch.student=, arch.critic=")
    with _env_placeholders(config_path) as missing:
        cfg = load_config(DistillConfig, config_path, overrides)
    if cfg.teacher.startswith("shapes-"):
        raise UsageError("genrl plan covers Wan2.1 recipes; the shapes models fit any laptop")
    p = plan_distill(cfg, quiet=quiet)
    if missing:
        click.echo(f"({', '.join(sorted(missing))} not set: architectures from the config's arch: section)")
    _roles(p.roles, 13)
    click.echo(f"{'all roles':<13} {'':<26} {sum(r.params for r in p.roles) / 1e9:>7.2f}B {'':>9} {'':>9} {'':>11} "
               f"{_gb(sum(r.total_bytes for r in p.roles)):>9}")
    from ..plan import MEASURED_TOKENS

    click.echo(f"activations, measured (bf16 autocast on this CPU, 2 blocks at {' and '.join(map(str, MEASURED_TOKENS))} "
               f"tokens a latent frame) and extrapolated to {p.batch} x {p.tokens:,} video tokens a sample:")
    labels = {"student": "student, streamed", "critic": "critic"}
    for name, m in p.passes.items():
        cache = f" + {_gb(m.cache)} KV cache" if m.cache else ""
        click.echo(f"  {labels.get(name, name):<18} {_gb(m.kept)} kept for backward{cache}; "
                   f"{_gb(m.checkpointed)}{cache} with activation checkpointing")
    if (r := p.reward) is not None:
        click.echo(f"  {'reward saliency':<18} {_gb(r.total())} beside the student's rollout ({_gb(r.vision)} vision tower, "
                   f"{_gb(r.language)} language model, {_gb(r.pixels)} pixels, their gradient and saliency); "
                   f"{_gb(r.total(True))} with activation checkpointing")
        click.echo(f"  {'':<18} (VideoReward over {p.batch} rollout(s): {r.frames_read} frames read at "
                   f"{r.size[1]}x{r.size[0]}, {r.vision_tokens:,} patches, {r.text_tokens:,} language tokens, "
                   f"gradients to the pixels)")
    click.echo(f"on {gpus} GPU(s) of {_gb(gpu_bytes)}:")
    _options(p, gpus, gpu_bytes, json_path, 52)


def _plan_grpo(config_path, overrides, arch, gpus, gpu_bytes, json_path, quiet):
    from .qa import GRPOConfig
    from ..config import load_config
    from ..policy_plan import TEXT_TOKENS, plan_grpo

    with _env_placeholders(config_path):
        cfg = load_config(GRPOConfig, config_path, overrides)
    if cfg.grpo.policy.startswith("shapes-") and not arch:
        raise UsageError("genrl plan covers transformers Qwen2-VL / Qwen2.5-VL policies (a folder as grpo.policy, or "
                         "--arch NAME); the shapes VLM fits any laptop")
    p = plan_grpo(cfg, arch, quiet=quiet)
    _roles(p.roles, 11)
    frozen = next(r.frozen_params for r in p.roles if r.name == "policy")
    if frozen:
        click.echo(f"(the policy's vision tower, {frozen / 1e9:.2f}B, is frozen: weights only)")
    click.echo(f"a row: {p.tokens:,} tokens ({p.video_tokens:,} video, {p.completion} completion, {TEXT_TOKENS} allowed "
               f"for the template and question); a step: {p.prompts} questions x {p.group} rows")
    click.echo(f"sampling: {_gb(p.sampling)} of KV cache for the step's {p.prompts * p.group} rows")
    s = p.scoring(p.passes)
    click.echo(f"scoring, measured (bf16 autocast on this CPU, 2 layers) for a pass of {p.rows(p.passes)} rows: "
               f"{_gb(s.kept)} kept for backward, {_gb(s.checkpointed)} with activation checkpointing")
    click.echo(f"on {gpus} GPU(s) of {_gb(gpu_bytes)} (data parallel: each holds the policy and the reference):")
    _options(p, gpus, gpu_bytes, json_path, 60)
    click.echo("parallel.sequence=N splits each row's tokens over N GPUs: its row counts each layer's share as 1/N of the "
               "tokens (a Qwen2-VL layer measured 0.55 at N=2 in `genrl bench sp`); sampling runs whole on each")


def _options(p, gpus: int, gpu_bytes: int, json_path, width: int) -> None:
    """The plan's options with their memory per GPU and verdicts (and the JSON, when asked)."""
    for row in p.fits(gpus, gpu_bytes):
        verdict = "fits" if row["fits"] else "does not fit"
        note = "" if row["supported"] else "  (not yet in genrl's trainer)"
        click.echo(f"  {row['option']:<{width}} {_gb(row['per_gpu_bytes']):>9} per GPU: {verdict}{note}")
    if json_path:
        Path(json_path).write_text(json.dumps(p.to_json(gpus, gpu_bytes), indent=2) + "\n")


def _roles(roles, width: int) -> None:
    """The table of roles: parameters, dtype, weights, gradients and AdamW states, total."""
    click.echo(f"{'role':<{width}} {'architecture':<26} {'params':>8} {'dtype':>9} {'weights':>9} {'grads+Adam':>11} "
               f"{'total':>9}")
    for r in roles:
        states = _gb(r.state_bytes) if r.trainable else "-"
        click.echo(f"{r.name:<{width}} {Path(r.arch).name[:26]:<26} {r.params / 1e9:>7.2f}B {r.dtype:>9} "
                   f"{_gb(r.weight_bytes):>9} {states:>11} {_gb(r.total_bytes):>9}")
