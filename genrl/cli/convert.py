"""`genrl convert`: turn a model released in another project's layout into a folder genrl loads."""

from __future__ import annotations

import click


@click.group(context_settings={"show_default": True})
def convert():
    """Convert released checkpoints into folders genrl loads (once; nothing is downloaded)."""


@convert.command(name="videoreward")
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--base", required=True, type=click.Path(file_okay=False),
              help="The local Qwen2-VL-2B-Instruct folder the release was trained from (config, tokenizer, weights).")
@click.option("--videoalign-src", default="", help="A VideoAlign source checkout: its prompt_template.py gives the trained "
                                                  "template (parsed, never executed).")
@click.option("--template", "template_file", default="", help="Or a text file holding the template ({text_prompt} and "
                                                              "the three reward tokens).")
@click.option("--step", type=int, default=None, help="Checkpoint step to convert (default: the latest checkpoint-N).")
def videoreward(src, dst, base, videoalign_src, template_file, step):
    """VideoAlign's VideoReward release (model_config.json + checkpoint-N/) -> a folder for `--reward videoreward`.

    LoRA pairs are merged into their weights, PEFT's wrapper prefix is stripped, keys are
    mapped to the installed transformers layout and every tensor is accounted for: a
    missing or unexpected key is one line naming it. `.pth` files are read with
    torch.load(weights_only=True) only.

    \b
    Example:
      genrl convert videoreward /models/VideoReward /models/videoreward-genrl \\
        --base /models/Qwen2-VL-2B-Instruct --videoalign-src ~/src/VideoAlign
      genrl score clip.mp4 --prompt "a corgi surfing" --reward videoreward --weights /models/videoreward-genrl
    """
    from ..registry import CONVERTERS

    out = CONVERTERS.get("videoreward")(src, dst, base, videoalign_src, template_file, step)
    click.echo(f"wrote {out}: transformers weights with the reward head, tokenizer with the reward tokens, "
               "genrl_videoreward.json (template, frame rule, normalisation)")
