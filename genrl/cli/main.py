"""Entry point: the click group, and the one place errors become exit codes.

Exit codes: 0 ok, 1 failed work, 2 bad usage (bad arguments, config or input
file), each reported as one line on stderr without a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import TrainingDiverged, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module under genrl.cli, attribute, the line `genrl --help` shows), in the order a user meets them.
    # A command's module is imported only when that command runs (or its --help is asked for), so
    # `genrl --help`, `--version` and the commands that need no torch answer without importing it.
    "data": ("data", "data", "Inspect the embedded shapes world (captioned procedural videos)."),
    "pretrain": ("pretrain", "pretrain", "Pretrain the teacher (flow matching) or its autoencoder on the shapes world."),
    "train-reward": ("reward", "train_reward", "Train the shapes reward model (VQ, MQ, TA) with Bradley–Terry-with-ties."),
    "distill": ("distill", "distill", "Distil the teacher into a streaming student (ODE init, DMD, Stream-R1)."),
    "sweep": ("sweep", "sweep", "Run a distillation recipe over variants x seeds and tabulate the evals."),
    "plan": ("plan", "plan", "Parameters and memory per role of a distillation or GRPO recipe, and what fits on your GPUs."),
    "sft": ("qa", "sft", "Supervised warm-start of the tiny VLM on shapes video QA."),
    "grpo": ("qa", "grpo", "GRPO (or T-GRPO, TW-GRPO, Reg-GRPO) on shapes video QA from an SFT start."),
    "rl-vs-sft": ("qa", "rl_vs_sft", "SEED-Bench-R1's question on the shapes world: from one start, more SFT or GRPO?"),
    "sample": ("sample", "sample", "Generate videos from text prompts."),
    "eval": ("sample", "evaluate", "Measure a video generator (or, with --task qa, a video-language model) on held-out prompts."),
    "compare": ("compare", "compare", "Paired difference of two generators on the same prompts and sampling seeds (or two "
                "video-language models on the same questions), with 95% intervals."),
    "select": ("compare", "select", "Pick a checkpoint on validation by a rule fixed in advance: it must beat the baseline's "
               "accuracy and lose no guarded metric, and among those the highest accuracy wins."),
    "score": ("score", "score", "Score videos with a reward model: visual quality, motion quality, text alignment."),
    "convert": ("convert", "convert", "Convert released checkpoints into folders genrl loads (once; nothing is downloaded)."),
    "export": ("export", "export", "Write MODELS (built-in names, .safetensors files, run folders or checkpoints) as one "
               "weights file."),
    "report": ("report", "report", "Rebuild report.md and plots/ of each RUN folder from its metrics.jsonl, eval*.json "
               "and samples."),
    "bench": ("bench", "bench", "Speed and memory, measured side by side in one process (ratios, medians, spreads)."),
    "env": ("env", "env", "What this machine gives genrl: versions, GPUs, optional kernels, and the choices genrl makes "
            "here."),
}


class Group(click.Group):
    """The top-level group: commands listed in the order a user meets them, each loaded on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def format_commands(self, ctx, formatter):
        """The command list of `genrl --help`, from COMMANDS' lines (nothing imported)."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, click.Command(name, help=line).get_short_help_str(limit)) for name, (_, _, line) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="genrl", prog_name="genrl")
def cli():
    """genrl: reinforcement-style post-training for video models.

    \b
    Distil a slow bidirectional text-to-video teacher into a fast streaming
    student (DMD, weighted the Stream-R1 way by a video reward model), and
    train video-understanding models with GRPO, on one shared core. Runs out
    of the box on the embedded shapes world, on a laptop CPU.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising SystemExit."""
    try:
        rv = cli.main(args=argv, prog_name="genrl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # `genrl data` alone: show its help
        click.echo(e.ctx.get_help())
        return 0
    except click.UsageError as e:
        hint = f" (see 'genrl {e.ctx.command_path.partition(' ')[2]} --help')".replace("  ", " ") if e.ctx else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except UsageError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except TrainingDiverged as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted; outputs written so far are complete", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def entry() -> None:  # console_scripts target
    sys.exit(main())
