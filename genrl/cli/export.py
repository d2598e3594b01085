"""`genrl export`: one model, or the weight average of several, as a single safetensors file."""

from __future__ import annotations

import click

from .options import output_file, timesteps_option

DTYPES = ("float32", "float16", "bfloat16")


@click.command(context_settings={"show_default": True})
@click.argument("models", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=output_file((".safetensors",)), help="The .safetensors file to write.")
@click.option("--dtype", "dtype_name", type=click.Choice(DTYPES), default="float32",
              help="Floating-point type of the written weights (the shipped shapes models are float16).")
@timesteps_option("A streaming student's default timesteps per chunk, written into the file (e.g. 1000,625,375,125; "
                  "default: the ones it has).")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def export(models, out, dtype_name, timesteps, quiet):
    """Write MODELS (built-in names, .safetensors files, run folders or checkpoints) as one weights file.

    One model: its weights, cast to --dtype (how the shipped students were exported). Several: the
    uniform average of their weights (a weight soup), for models of one kind and config, e.g. the
    EMA students of one recipe's training seeds. The file loads anywhere a model is asked for.

    \b
    Examples:
      genrl export runs/dmd/checkpoints/step_0000200 --out student.safetensors --dtype float16
      genrl export runs/dmd_s0/checkpoints/step_0000200 runs/dmd_s1/checkpoints/step_0000200 --out soup.safetensors
      genrl eval --checkpoint soup.safetensors --split val --num 256
      genrl export shapes-student-dmd --out d.safetensors --dtype float16 --timesteps 1000,625,375,125
    """
    import torch

    from ..errors import UsageError
    from ..generation import is_streaming
    from ..models.registry import average_models, model_metadata, save_weights

    model = average_models(list(models))
    meta = model_metadata(model)
    if timesteps is not None:
        if not is_streaming(model):
            raise UsageError(f"--timesteps is for streaming students; {models[0]} makes the whole video at once")
        model.cfg.streaming.timesteps = timesteps
    save_weights(model, out, meta["genrl_kind"], model.cfg, dtype=getattr(torch, dtype_name))
    if not quiet:
        what = "the average of " + ", ".join(models) if len(models) > 1 else models[0]
        n = sum(p.numel() for p in model.state_dict().values())
        click.echo(f"wrote {out}: {what} ({n:,} values, {dtype_name})")
