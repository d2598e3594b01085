"""`genrl sample` and `genrl eval`: generate videos from prompts; measure them against the world."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..worlds import SPLITS
from .options import OutputFolder, output_file, quiet_option, seed_option, timesteps_option


def model_options(fn):
    fn = click.option("--checkpoint", default=None, help="Path to a .safetensors file, run folder or checkpoint instead of --model.")(fn)
    return click.option("--model", default=None, help="Built-in model name (e.g. shapes-teacher).")(fn)


def sampling_options(fn):
    fn = click.option("--guidance", type=click.FloatRange(0, 50), default=None,
                      help="CFG scale of a teacher (1 = off; default: the model's, 4 for the shapes teacher, 5 for "
                           "Wan2.1 as WanPipeline). Streaming students sample without CFG: "
                           "their teacher's guidance is distilled in.")(fn)
    fn = click.option("--steps", type=click.IntRange(1, 1000), default=None,
                      help="Denoising steps: a teacher's Euler steps (default 50), or a streaming student's steps "
                           "per chunk, N evenly spaced timesteps from 1000 down (default: the schedule it was "
                           "trained with, e.g. 4 = [1000, 750, 500, 250]).")(fn)
    fn = timesteps_option("A streaming student's timesteps per chunk one by one, from 1000 down (e.g. "
                          "1000,625,375,125), instead of --steps' even spacing.")(fn)
    fn = click.option("--first-steps", type=click.IntRange(1, 1000), default=None,
                      help="A streaming student's steps for its first chunk alone, the one with no cache to lean "
                           "on (a long stream pays for it once; default: as --steps).")(fn)
    return click.option("--frames", type=click.IntRange(1, 4096), default=None, help="Frames to generate (default: training length).")(fn)


def sampling_config(gen, steps: int | None, guidance: float | None, first_steps: int | None = None,
                    timesteps: list[float] | None = None):
    """The SamplingConfig --steps, --timesteps, --first-steps and --guidance ask for, as ``gen`` reads them
    (see `sampling_options`)."""
    from ..generation import SamplingConfig, is_streaming

    if is_streaming(gen):
        if guidance is not None:
            raise UsageError("--guidance is for teachers: a streaming student samples without CFG (its teacher's "
                             "guidance is distilled in); --steps sets its denoising steps per chunk")
        if timesteps is not None and steps is not None:
            raise UsageError("give --steps (N evenly spaced timesteps) or --timesteps (each one), not both")
        return SamplingConfig(student_steps=steps, first_chunk_steps=first_steps, student_schedule=timesteps)
    for name, v in (("--first-steps", first_steps), ("--timesteps", timesteps)):
        if v is not None:
            raise UsageError(f"{name} is for streaming students (a teacher makes the whole video at once); "
                             "--steps sets a teacher's Euler steps")
    return SamplingConfig(50 if steps is None else steps, gen.default_guidance if guidance is None else guidance)


def load_generator(model: str | None, checkpoint: str | None, kind: str = "video_model", height=None, width=None):
    from ..models.registry import load_model

    if bool(model) == bool(checkpoint):
        raise UsageError("give exactly one of --model NAME or --checkpoint PATH")
    size = {k: v for k, v in (("height", height), ("width", width)) if v}
    gen = load_model(model or checkpoint, kind=kind, overrides=size)
    return gen


def _read_prompts(prompt: tuple[str, ...], prompts_file: str | None) -> list[str]:
    out = list(prompt)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise UsageError(f"prompts file {path} does not exist")
        out += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not out:
        raise UsageError("no prompt given: use --prompt TEXT or --prompts FILE (one prompt per line)")
    return out


@click.command()
@model_options
@click.option("--prompt", multiple=True, help="Text prompt (repeatable).")
@click.option("--prompts", "prompts_file", default=None, help="File with one prompt per line.")
@sampling_options
@click.option("--out", type=output_file((".gif", ".mp4")), default=None,
              help="Video to write; several prompts (or --samples) make a captioned grid.")
@click.option("--out-dir", type=OutputFolder(), default=None,
              help="Instead of --out: one .mp4 per prompt and sample, named '<prompt>-<i>.mp4' as VBench reads "
                   "them, and prompts.tsv (path<TAB>prompt) for `genrl score DIR --prompts DIR/prompts.tsv`. "
                   "Re-running with the same settings (kept in sample.json) makes only the missing videos.")
@click.option("--samples", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Videos per prompt; sample i is drawn with seed --seed + i.")
@click.option("--scale", type=click.IntRange(1, 16), default=None,
              help="Pixel enlargement in the written file (default: enough for 128 pixels on the short side, so 4 "
                   "for the 32x32 shapes models and 1 for Wan2.1).")
@click.option("--height", type=click.IntRange(16, 4096), default=None, help="Frame height (Wan models; default 480).")
@click.option("--width", type=click.IntRange(16, 4096), default=None, help="Frame width (Wan models; default 832).")
@click.option("--frames-dir", type=OutputFolder(), default=None,
              help="Also write every frame as PNG the moment its chunk is generated (streaming students).")
@seed_option
@quiet_option
def sample(model, checkpoint, prompt, prompts_file, frames, steps, guidance, first_steps, timesteps, out, out_dir, samples,
           scale, height, width, frames_dir, seed, quiet):
    """Generate videos from text prompts.

    With --out, every video goes into one file (a captioned grid when there are
    several). With --out-dir, each prompt and sample gets its own file, made
    alone: a video depends only on its prompt, its sample index i and --seed
    (it is the video `--prompt P --seed SEED+i --out FILE` writes), so an
    interrupted run resumes where it stopped and a prompt list can be split
    over machines.

    \b
    Examples:
      genrl sample --model shapes-teacher --prompt "a large red circle moving left slowly on a dark background" --out red.gif
      genrl sample --model shapes-teacher --prompts samples/prompts.txt --steps 30 --out grid.gif
      genrl sample --model shapes-student-dmd --prompts samples/prompts.txt --samples 5 --out-dir videos/
      genrl sample --checkpoint /models/Wan2.1-T2V-1.3B-Diffusers --prompt "a cat surfing" --frames 81 --out cat.mp4
    """
    import torch

    from ..generation import generate
    from ..io.grid import captioned_grid
    from ..io.video import write_video

    if (out is None) == (out_dir is None):
        raise UsageError("give exactly one of --out FILE (one video or grid) or --out-dir FOLDER (a file per video)")
    if out_dir is not None and frames_dir is not None:
        raise UsageError("--frames-dir writes the frames of one batch as they stream; use it with --out, not --out-dir")
    prompts = _read_prompts(prompt, prompts_file)
    gen = load_generator(model, checkpoint, height=height, width=width)
    _warn_unknown_words(gen, prompts, quiet)
    from ..worlds.shapes import WorldConfig

    frames = frames or (gen.pixel_frames(21) if not gen.chunk_decodable else WorldConfig().frames)
    sampling = sampling_config(gen, steps, guidance, first_steps, timesteps)
    if out_dir is not None:
        made_with = {"model": model or str(Path(checkpoint).resolve()), "frames": frames, "steps": steps,
                     "timesteps": timesteps, "first_steps": first_steps, "guidance": guidance, "seed": seed,
                     "scale": scale, "height": height, "width": width}
        return _sample_to_folder(gen, prompts, frames, sampling, samples, seed, scale, Path(out_dir), quiet, made_with)
    on_chunk = _png_writer(Path(frames_dir), scale) if frames_dir else None
    videos, seconds = [], 0.0
    for i in range(samples):  # sample i: the whole batch at seed + i
        torch.manual_seed(seed + i)
        result = generate(gen, prompts, frames, sampling, seed + i, on_chunk if i == 0 else None)
        videos.append(result.videos)
        seconds += result.seconds
    videos = torch.stack(videos, dim=1).flatten(0, 1)  # prompt-major: each prompt's samples side by side
    captions = [p for p in prompts for _ in range(samples)]
    if len(captions) == 1:
        write_video(out, _enlarged(videos[0], scale), fps=gen.fps)
    else:
        write_video(out, captioned_grid(videos, captions, cols=4 if samples == 1 else samples,
                                        scale=scale or display_scale(videos)), fps=gen.fps)
    fps = len(captions) * frames / seconds
    click.echo(f"wrote {out}: {len(captions)} video(s) x {frames} frames in {seconds:.2f}s ({fps:.1f} frames/s, "
               f"{result.nfe_per_frame:g} NFE/frame)")


MANIFEST = "prompts.tsv"


def display_scale(videos) -> int:
    """Default enlargement of videos (..., H, W): the least whole factor giving 128 pixels on the short side."""
    return max(1, -(-128 // min(videos.shape[-2:])))


def _enlarged(videos, scale: int | None):
    """``videos`` enlarged by ``scale`` (--scale), or by :func:`display_scale` when it is not given."""
    from ..io.video import upscale

    return upscale(videos, scale or display_scale(videos))


def video_names(prompts: list[str]) -> dict[str, str]:
    """File stem of each distinct prompt: the prompt itself, as VBench names its videos, with '/' and runs of
    whitespace made single spaces; a prompt that cannot be a file name that way (empty, leading '.', over 180
    bytes, or sharing its stem with another prompt) gets a shortened stem and 8 hex digits of its hash."""
    import hashlib

    def plain(p: str) -> str:
        return " ".join(p.replace("/", " ").split())

    stems = {p: plain(p) for p in dict.fromkeys(prompts)}
    taken: dict[str, int] = {}
    for stem in stems.values():
        taken[stem] = taken.get(stem, 0) + 1
    out = {}
    for p, stem in stems.items():
        if not stem or stem.startswith(".") or len(stem.encode()) > 180 or taken[stem] > 1:
            short = stem.encode()[:120].decode(errors="ignore").lstrip(".").strip()
            stem = f"{short or 'prompt'}-{hashlib.sha1(p.encode()).hexdigest()[:8]}"
        out[p] = stem
    return out


SETTINGS = "sample.json"


def _sample_to_folder(gen, prompts: list[str], frames: int, sampling, samples: int, seed: int, scale: int | None,
                      folder: Path, quiet: bool, made_with: dict) -> None:
    """One file per (prompt, sample), each generated alone at seed + i; existing files are kept (a resumed run),
    so the folder's sample.json holds the settings its videos were made with, and other settings are refused."""
    import torch

    from ..generation import generate
    from ..io.video import write_video
    from ..progress import progress_bar

    settings = folder / SETTINGS
    if settings.is_file():
        before = json.loads(settings.read_text())
        changed = [f"{k}={before.get(k)!r} there, {v!r} now" for k, v in made_with.items() if before.get(k) != v]
        if changed:
            raise UsageError(f"{folder} holds videos made with other settings ({'; '.join(changed)}): give another "
                             f"--out-dir, or the same settings to add to it")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SETTINGS}.tmp"
    tmp.write_text(json.dumps(made_with, indent=1) + "\n")
    tmp.replace(settings)
    names = video_names(prompts)
    duplicates = len(prompts) - len(names)
    jobs = [(p, i, folder / f"{stem}-{i}.mp4") for p, stem in names.items() for i in range(samples)]
    todo = [j for j in jobs if not j[2].is_file()]
    seconds, nfe = 0.0, None
    with progress_bar(len(todo), "sample", quiet or len(todo) < 2) as advance:
        for p, i, path in todo:
            torch.manual_seed(seed + i)
            result = generate(gen, [p], frames, sampling, seed + i)
            write_video(path, _enlarged(result.videos[0], scale), fps=gen.fps)  # atomic: a killed run leaves no half file
            seconds, nfe = seconds + result.seconds, result.nfe_per_frame
            advance()
    manifest = folder / MANIFEST  # earlier runs' videos (other prompts, fewer samples) keep their lines
    lines = manifest.read_text().splitlines() if manifest.is_file() else []
    listed = dict(line.split("\t", 1) for line in lines if "\t" in line)
    listed.update((path.name, " ".join(p.splitlines())) for p, _, path in jobs)
    tmp = manifest.with_name(f".{MANIFEST}.tmp")
    tmp.write_text("".join(f"{name}\t{text}\n" for name, text in listed.items() if (folder / name).is_file()))
    tmp.replace(manifest)
    done = f"wrote {len(todo)} video(s) x {frames} frames to {folder}"
    if todo:
        done += f" in {seconds:.2f}s ({len(todo) * frames / seconds:.1f} frames/s, {nfe:g} NFE/frame)"
    if len(todo) < len(jobs):
        done += f"; {len(jobs) - len(todo)} already there, kept"
    if duplicates:
        done += f"; {duplicates} repeated prompt(s) made once"
    click.echo(f"{done}; {MANIFEST} lists path<TAB>prompt (genrl score {folder} --prompts {manifest})")


def _warn_unknown_words(gen, prompts: list[str], quiet: bool) -> None:
    """Shapes models: one line naming words the world does not know, and the known vocabulary."""
    from ..models.video_model import VideoModel

    if not isinstance(gen, VideoModel):
        return
    from ..worlds.prompting import parse_prompt, unknown_words_line

    parsed = [parse_prompt(p) for p in prompts]  # only read here: the model extends the prompts as it samples
    unknown = list(dict.fromkeys(w for p in parsed for w in p.unknown))
    if unknown:
        click.echo(unknown_words_line(unknown), err=True)
    partial = sum(len(p.named) < len(p.attributes) for p in parsed)
    if partial and not quiet:
        click.echo(f"{partial} prompt(s) leave attributes unnamed: those are drawn from the world (per --seed)")


def _png_writer(folder: Path, scale: int | None):
    """on_chunk callback writing video_<b>/<frame>.png as chunks arrive."""
    import imageio.v3 as iio

    from ..io.video import to_uint8

    def write(start: int, pixels) -> None:
        for b, video in enumerate(pixels):
            sub = folder / f"video_{b:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(to_uint8(_enlarged(video, scale))):
                iio.imwrite(sub / f"{start + i:05d}.png", frame)

    return write


@click.command(name="eval")
@model_options
@click.option("--task", type=click.Choice(("video", "qa", "stream", "causal")), default="video", show_default=True,
              help="'video': text-to-video generators against the attribute probe; 'qa': a video-language model "
                   "answering held-out shapes questions (accuracy overall and per question type); 'stream': the same "
                   "model asked after every chunk of a clip as it plays (accuracy by frames seen, latency per answer); "
                   "'causal': how much of each chunk of a bidirectional teacher's videos the noise of that chunk and "
                   "the earlier ones fixes, i.e. what a streaming student can learn from its ODE pairs (--num "
                   "prompts x 2 noises x 4 draws of the later noise per chunk).")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="World split whose prompts are used.")
@click.option("--num", type=click.IntRange(1, 100_000), default=128, show_default=True, help="Videos to generate and score.")
@click.option("--batch", type=click.IntRange(1, 1024), default=32, show_default=True, help="Videos generated at once.")
@sampling_options
@click.option("--prompts", "prompt_style", type=click.Choice(("full", "partial", "paraphrase")), default="full",
              help="full: the world's captions; partial: random subsets of the attributes in random order; "
                   "paraphrase: all attributes in other words. Accuracy counts the attributes a prompt names.")
@click.option("--out", type=output_file((".json",)), default=None, help="Write the figures as JSON.")
@click.option("--reward", "rewards", multiple=True, default=("shapes",), show_default=True,
              help="Reward model whose mean z-scores (vq, mq, ta, overall) go into the report: a backend name "
                   "(shapes, clip, videoreward, vlm), backend:weights (e.g. vlm:runs/progress) or shapes-reward "
                   "weights (name or .safetensors). Repeat to add more (e.g. one not used in training); 'none' "
                   "skips rewards.")
@click.option("--hallucination", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="--task qa: share of choice questions whose right answer is 'none of these' (the clip's value "
                   "not offered, or a clip whose attribute changes halfway); 1.0 is the hallucination split.")
@click.option("--types", default="", help="--task qa: comma-separated question types to ask (default: the standard "
                                           "seven; 'progress' is opt-in).")
@seed_option
@quiet_option
def evaluate(model, checkpoint, task, split, num, batch, frames, steps, guidance, first_steps, timesteps, prompt_style, out, rewards, hallucination,
             types, seed, quiet):
    """Measure a video generator (or, with --task qa, a video-language model) on held-out prompts.

    For generators, reports `prompt_accuracy` (every attribute of the prompt read back from the
    pixels), per-attribute accuracy, accuracy on the first and last quarter of
    the frames (drift on long videos), the reward models' mean z-scores,
    frames/s and NFE per frame. For --task qa: greedy answers to --num shapes
    questions, `accuracy` overall and per question type.

    \b
    Examples:
      genrl eval --model shapes-teacher --split test --num 128 --out eval.json
      genrl eval --model shapes-student-dmd --frames 36 --reward shapes --reward shapes-reward-b
      genrl eval --model shapes-teacher --prompts partial --num 256
      genrl eval --task qa --model shapes-vlm --split test --num 512 --out qa.json
      genrl eval --task qa --model shapes-vlm --num 512 --hallucination 1.0
      genrl eval --task qa --checkpoint runs/progress --num 512 --types progress
      genrl eval --task stream --checkpoint runs/sft_stream --num 512 --out stream.json
      genrl eval --task causal --model shapes-teacher --split val --num 32 --steps 30
    """
    given = [name for name, v in (("--steps", steps), ("--first-steps", first_steps), ("--timesteps", timesteps),
                                  ("--guidance", guidance), ("--frames", frames)) if v is not None]
    if task == "causal":
        wrong = [n for n, bad in (("--hallucination", hallucination), ("--types", types), ("--prompts", prompt_style != "full"))
                 if bad] + [n for n in given if n in ("--first-steps", "--timesteps")]
        if wrong:
            raise UsageError(f"{wrong[0]} is not an option of --task causal (it takes a teacher's --steps, --guidance "
                             f"and --frames)")
        return _evaluate_causal(model, checkpoint, split, num, batch, frames, steps, guidance, out, seed, quiet)
    if task != "video" and given:
        raise UsageError(f"{given[0]} is for --task video (generators); --task {task} asks a video-language model questions")
    if task == "qa":
        return _evaluate_qa(model, checkpoint, split, num, batch, out, quiet, hallucination, types)
    if task == "stream":
        if hallucination:
            raise UsageError("--hallucination is for --task qa")
        return _evaluate_stream(model, checkpoint, split, num, batch, out, quiet, types)
    if hallucination or types:
        raise UsageError(f"{'--hallucination' if hallucination else '--types'} is for --task qa")
    from ..evaluation import evaluate as run_eval

    gen = load_generator(model, checkpoint)
    from ..models.video_model import VideoModel

    if not isinstance(gen, VideoModel):
        raise UsageError(f"{model or checkpoint} is a {type(gen).__name__}: --task video reads shapes-world videos back "
                         "with the attribute probe, which cannot judge it; write its videos with genrl sample "
                         "--prompts FILE --out-dir DIR, then score them with genrl score DIR --prompts DIR/prompts.tsv "
                         "--reward videoreward")
    sampling = sampling_config(gen, steps, guidance, first_steps, timesteps)
    rewards = [] if "none" in rewards else list(rewards)
    report = {"model": model or checkpoint,
              **run_eval(gen, split, num, batch, frames, sampling, rewards, seed, quiet, prompt_style)}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(
        f"{report['model']} on {num} {split} prompts ({prompt_style}): prompt_accuracy={report['prompt_accuracy']:.4f} "
        f"frames/s={report['frames_per_second']} nfe/frame={report['nfe_per_frame']:g}"
    )
    m = report["motion"]
    if m["jerk"] is not None:
        seams = (f"; step across chunk seams {m['step_across_chunks']:.3f} px vs inside chunks "
                 f"{m['step_inside_chunks']:.3f}" if "step_across_chunks" in m else "")
        click.echo(f"motion: jerk {m['jerk']:.3f} px/frame (constant velocity: 0; the world's own clips read about 0.01) over the {m['videos_read']} "
                   f"readable videos{seams}")
    aucs = report.get("reward_probe_auc") or {}
    if len(aucs) > 1:  # how well each reward's overall score tells probe-right videos from wrong ones
        first = report["reward_model"]
        line = ", ".join(f"{n} {a:.3f}" if a is not None else f"{n} n/a" for n, a in aucs.items())
        diffs = " ".join(f"; {n} - {first} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"
                         for n, d in report["reward_probe_auc_vs_first"].items() if d is not None)
        click.echo(f"reward probe AUC: {line}{diffs} (paired over videos, 95% bootstrap interval)")


def _evaluate_causal(model, checkpoint, split, num, batch, frames, steps, guidance, out, seed, quiet):
    from ..causality import causal_report
    from ..generation import is_streaming

    teacher = load_generator(model, checkpoint)
    if is_streaming(teacher):
        raise UsageError(f"{model or checkpoint} is a streaming student; --task causal measures a bidirectional "
                         f"teacher (e.g. --model shapes-teacher)")
    try:
        report = causal_report(teacher, split, num, frames, 50 if steps is None else steps,
                               teacher.default_guidance if guidance is None else guidance, batch=batch, seed=seed,
                               quiet=quiet)
    except ValueError as e:
        raise UsageError(str(e)) from None
    report = {"model": model or checkpoint, **report}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"{report['model']}, {num} {split} prompts x {report['bases']} noises x {report['draws']} draws of the "
               f"later chunks' noise ({report['chunk_frames']}-frame chunks):")
    for row in report["chunks"]:
        line = (f"chunk {row['chunk']}: {row['share_unfixed']:.3f} of its variance is left open by the noise of "
                f"chunks <= {row['chunk']}")
        if "probe_single" in row:
            line += (f"; probe on its frames: single draws {row['probe_single']:.3f}, mean of the draws (a causal "
                     f"regression's target) {row['probe_mean_of_draws']:.3f}")
        click.echo(line)


def _policy_and_questions(model, checkpoint, types: str, config):
    """The policy named by --model or --checkpoint and the shapes QA task ``config(policy, types or None)`` builds
    for it; a bad --types is one usage line."""
    from ..methods.qa import load_policy
    from ..worlds.qa import ShapesQA

    if bool(model) == bool(checkpoint):
        raise UsageError("give exactly one of --model NAME or --checkpoint PATH")
    vlm = load_policy(model or checkpoint)
    asked = [t.strip() for t in types.split(",") if t.strip()]
    try:
        return vlm, ShapesQA(config(vlm, asked or None))
    except ValueError as e:  # the task's own check of the question types
        raise UsageError(f"--types: {e}") from None


def _evaluate_qa(model, checkpoint, split, num, batch, out, quiet, hallucination=0.0, types=""):
    from ..methods.qa import _qa_config_for, evaluate_qa, summary

    vlm, qa = _policy_and_questions(model, checkpoint, types, lambda v, asked: _qa_config_for(v, hallucination, asked))
    report = {"model": model or checkpoint, **evaluate_qa(vlm, split, num, batch, qa=qa, quiet=quiet)}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"{report['model']} on {num} {split} questions: {summary(report)}")


def _evaluate_stream(model, checkpoint, split, num, batch, out, quiet, types=""):
    from ..methods.vst import evaluate_stream, stream_qa_config, stream_summary
    from ..models.vlm import TinyVLM

    def questions(vlm, asked):
        if not isinstance(vlm, TinyVLM):
            raise UsageError("--task stream needs a genrl VLM (a transformers policy has no streaming cache here)")
        return stream_qa_config(vlm, asked)

    vlm, qa = _policy_and_questions(model, checkpoint, types, questions)
    report = {"model": model or checkpoint, **evaluate_stream(vlm, split, num, batch, qa=qa, quiet=quiet)}
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"{report['model']} on {num} {split} streams: {stream_summary(report)}")
