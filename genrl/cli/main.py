"""Entry point: the click group, and the one place errors become exit codes.

Exit codes: 0 ok, 1 failed work, 2 bad usage (bad arguments, config or input
file), each reported as one line on stderr without a traceback.
"""

from __future__ import annotations

import sys

import click

from ..errors import TrainingDiverged, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Lists commands in the order they were added (the order a user meets them)."""

    def list_commands(self, ctx):
        return list(self.commands)


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


def _register() -> None:
    from . import bench, compare, convert, data, distill, export, plan, pretrain, qa, reward, sample, score, sweep

    cli.add_command(data.data)
    cli.add_command(pretrain.pretrain)
    cli.add_command(reward.train_reward)
    cli.add_command(distill.distill)
    cli.add_command(sweep.sweep)
    cli.add_command(plan.plan)
    cli.add_command(qa.sft)
    cli.add_command(qa.grpo)
    cli.add_command(qa.rl_vs_sft)
    cli.add_command(sample.sample)
    cli.add_command(sample.evaluate)
    cli.add_command(compare.compare)
    cli.add_command(compare.select)
    cli.add_command(score.score)
    cli.add_command(convert.convert)
    cli.add_command(export.export)
    cli.add_command(bench.bench)


_register()


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
