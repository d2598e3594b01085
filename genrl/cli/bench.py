"""`genrl bench`: costs measured side by side in one process, reported as ratios.

Timings taken in separate runs on a shared machine mostly measure the machine;
here the things compared alternate round by round in one process, after a
warm-up round, so a slowdown hits both alike and the ratio stays meaningful.
Every subcommand prints a table and, with ``--json``, writes stable keys
(``stream.*``, ``train.*``, ``grpo.*``) plus the raw medians.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import click

from .distill import DistillConfig, RECIPE as DISTILL
from ..errors import UsageError
from .options import output_file, quiet_option
from .qa import GRPOConfig

json_option = click.option("--json", "json_path", type=output_file((".json",)), default=None,
                           help="Also write the figures (stable keys + raw medians) as JSON.")
side_option = click.option("--side", type=click.IntRange(2, 256), default=8,
                           help="Latent frame side (tokens per frame = (side/2)^2).")


@click.group()
def bench():
    """Speed and memory, measured side by side in one process (ratios, medians, spreads).

    \b
      genrl bench stream   streaming student vs the 50-step CFG teacher; per-chunk latency of a long stream
      genrl bench train    a Stream-R1 training step vs a plain DMD step (time and activation memory)
      genrl bench grpo     a GRPO step with cached video embeddings vs recomputing the vision tower
      genrl bench sp       a DiT and a VLM layer with sequence parallelism over 2 processes vs none
      genrl bench wan      a Wan2.1-size streaming student vs its CFG teacher (random weights, GPU)
      genrl bench all      stream, train and grpo into one JSON (the README's performance table)
    """


def int_list(ctx, param, value: str) -> list[int]:
    """A comma-separated list of positive integers (a click callback): sorted, without repeats."""
    try:
        out = sorted({int(v) for v in value.split(",")})
    except ValueError:
        out = []
    if not out or out[0] < 1:
        raise click.BadParameter(f"{value!r}: give positive integers separated by commas, e.g. 2,8,32")
    return out


# --------------------------------------------------------------------- timing
def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(fns: dict, rounds: int, label: str, quiet: bool) -> dict[str, list[float]]:
    """Seconds of each ``fns[name](i)`` per round, the callables taking turns for ``rounds`` timed
    rounds after one warm-up round (which fills caches and allocators)."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    for i in range(rounds + 1):
        for name, fn in fns.items():
            t = _timed(lambda: fn(i))
            if i:
                times[name].append(t)
        if not quiet and i:
            click.echo(f"{label} {i}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in fns), err=True)
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Half the range of the timed rounds (0 with one round)."""
    return (max(xs) - min(xs)) / 2


def _write(report: dict, json_path) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


# --------------------------------------------------------------------- stream
def stream_report(student_name: str, teacher_name: str, num: int, rounds: int, chunks: list[int], steps: int,
                  guidance: float, quiet: bool, frames: int = 0, student_steps: int | None = None,
                  first_steps: int | None = None) -> dict:
    """Student vs teacher on the same prompts and length, and the per-chunk latency of one long stream.
    ``student_steps``: the student's denoising steps per chunk (None: the schedule it was trained with);
    ``first_steps``: its first chunk's, if other."""
    import torch

    from ..generation import SamplingConfig, generate, nfe_per_frame, stream_schedule
    from ..models.registry import load_model
    from ..worlds.shapes import ShapesWorld, WorldConfig

    student, teacher = load_model(student_name, "video_model"), load_model(teacher_name, "video_model")
    if not student.cfg.streaming.enabled:
        raise click.UsageError(f"{student_name} is not a streaming student")
    world = ShapesWorld(WorldConfig())
    prompts, frames = world.prompts("test", range(num)), frames or world.cfg.frames
    sampling = SamplingConfig(steps, guidance, student_steps, first_steps)
    schedule = stream_schedule(student, sampling)
    first: dict[str, float] = {}

    def run(model, name, decode):
        t0 = time.perf_counter()
        first.pop(name, None)

        def mark(start, pixels):
            first.setdefault(name, time.perf_counter() - t0)

        with torch.no_grad():
            if decode:
                generate(model, prompts, frames, sampling, seed=0, on_chunk=mark)
            elif model.cfg.streaming.enabled:
                for _ in model.stream(prompts, frames, torch.Generator().manual_seed(0), **schedule):
                    mark(0, None)
            else:
                model.sample(prompts, frames, steps, guidance, torch.Generator().manual_seed(0))
                mark(0, None)
        return first[name]

    firsts: dict[str, list[float]] = {}

    def timed(model, name, decode):
        def fn(i):
            ttff = run(model, name, decode)
            if i:
                firsts.setdefault(name, []).append(ttff)
        return fn

    fns = {"student": timed(student, "student", True), "teacher": timed(teacher, "teacher", True),
           "student_nodecode": timed(student, "student_nodecode", False),
           "teacher_nodecode": timed(teacher, "teacher_nodecode", False)}
    times = alternate(fns, rounds, "stream", quiet)
    videos_frames = num * frames
    fps = {n: videos_frames / med(t) for n, t in times.items()}
    nfe_student, nfe_teacher = nfe_per_frame(student, sampling), nfe_per_frame(teacher, sampling)
    chunk_lat = chunk_latencies(student, max(chunks), chunks, rounds, quiet, schedule["timesteps"])
    c2, cmax = f"chunk{min(chunks)}", f"chunk{max(chunks)}"
    return {
        "stream.fps_ratio": fps["student"] / fps["teacher"],
        "stream.fps_ratio_nodecode": fps["student_nodecode"] / fps["teacher_nodecode"],
        "stream.first_frame_latency_ratio": med(firsts["teacher"]) / med(firsts["student"]),
        "stream.nfe_ratio": nfe_teacher / nfe_student,
        f"stream.{cmax}_over_{c2}": med(chunk_lat["cache"][max(chunks)]) / med(chunk_lat["cache"][min(chunks)]),
        f"stream.{cmax}_over_{c2}_nocache": med(chunk_lat["nocache"][max(chunks)]) / med(chunk_lat["nocache"][min(chunks)]),
        "raw": {"frames_per_second": fps, "seconds": {n: med(t) for n, t in times.items()},
                "seconds_spread": {n: spread(t) for n, t in times.items()},
                "first_frame_seconds": {n: med(t) for n, t in firsts.items()},
                "nfe_per_frame": {"student": nfe_student, "teacher": nfe_teacher},
                "chunk_seconds": {kind: {str(k): med(v) for k, v in d.items()} for kind, d in chunk_lat.items()},
                "decode_chunk_seconds": med(chunk_lat["decode"][min(chunks)]),
                "videos": num, "frames": frames, "student": student_name, "teacher": teacher_name,
                "teacher_steps": steps, "teacher_guidance": guidance, "student_timesteps": schedule["timesteps"],
                "student_first_chunk_timesteps": schedule["first_timesteps"]},
    }


def chunk_latencies(student, n_chunks: int, at: list[int], rounds: int, quiet: bool,
                    timesteps: list[float] | None = None) -> dict[str, dict[int, list[float]]]:
    """Seconds to make chunk k (its denoising steps + the cache refresh) of one stream of ``n_chunks``
    chunks with the rolling KV cache, against recomputing every earlier frame at each step without one
    (block-causal forward over the whole history); and the decode of one chunk, apart."""
    import torch

    from .. import schedulers as fm

    chunk = student.cfg.dit.chunk_frames
    sigmas = student.streaming_sigmas(timesteps)
    out = {"cache": {k: [] for k in at}, "nocache": {k: [] for k in at}, "decode": {k: [] for k in at}}
    prompts = ["a small red square moving left slowly on a dark background"]
    with torch.no_grad():
        text = student.encode_text(prompts)
        for r in range(rounds + 1):
            g = torch.Generator().manual_seed(r)
            cache, history = student.new_cache(), []
            for k in range(1, n_chunks + 1):
                x = torch.randn(student.latent_shape(1, chunk), generator=g)
                t0 = time.perf_counter()
                for i, s in enumerate(sigmas[:-1]):
                    x0 = student.predict_x0_streaming(x, s, text, cache)
                    if i + 1 < len(sigmas) - 1:
                        x = fm.add_noise(x0, torch.randn(x0.shape, generator=g), sigmas[i + 1])
                student.write_cache(x0, text, cache, g)
                cached = time.perf_counter() - t0
                if r and k in at:
                    out["cache"][k].append(cached)
                    out["decode"][k].append(_timed(lambda: student.decode(x0)))
                    out["nocache"][k].append(_timed(lambda: _no_cache_chunk(student, history, text, sigmas, g)))
                history.append(x0)
            if not quiet and r:
                click.echo(f"chunks {r}/{rounds}: " + ", ".join(f"chunk {k} {out['cache'][k][-1] * 1e3:.1f} ms "
                                                              f"(no cache {out['nocache'][k][-1] * 1e3:.1f} ms)" for k in at), err=True)
    return out


def _no_cache_chunk(student, history: list, text, sigmas: list[float], g) -> None:
    """One chunk made without a KV cache: every step runs the block-causal model over all earlier frames too."""
    import torch

    from .. import schedulers as fm

    past = torch.cat(history, dim=1) if history else None
    x = torch.randn(history[0].shape if history else student.latent_shape(1, student.cfg.dit.chunk_frames), generator=g)
    n = x.shape[1]
    for i, s in enumerate(sigmas[:-1]):
        full = x if past is None else torch.cat((past, x), dim=1)
        t = torch.zeros(1, full.shape[1])
        t[:, -n:] = s * fm.NUM_TRAIN_TIMESTEPS
        v = student.dit(full, t, *text, causal=True)[:, -n:]
        x0 = fm.x0_from_velocity(x, v, s)
        if i + 1 < len(sigmas) - 1:
            x = fm.add_noise(x0, torch.randn(x0.shape, generator=g), sigmas[i + 1])


@bench.command(name="stream", context_settings={"show_default": True})
@click.option("--student", default="shapes-student-dmd", help="Streaming student (name or path).")
@click.option("--teacher", default="shapes-teacher", help="Bidirectional teacher (name or path).")
@click.option("--num", type=click.IntRange(1, 256), default=8, help="Videos generated at once (same test prompts for both).")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, help="Timed rounds after one warm-up round.")
@click.option("--chunks", default="2,8,32,64", callback=int_list, help="Chunks of one long stream whose latency is reported.")
@click.option("--teacher-steps", type=click.IntRange(1, 1000), default=50, help="Teacher Euler steps.")
@click.option("--guidance", type=click.FloatRange(1, 50), default=4.0, help="Teacher CFG scale.")
@click.option("--student-steps", type=click.IntRange(1, 1000), default=None,
              help="Student denoising steps per chunk, N evenly spaced timesteps (default: its trained schedule).")
@click.option("--first-steps", type=click.IntRange(1, 1000), default=None,
              help="Student steps for its first chunk alone (default: as --student-steps); time to first frame pays for it.")
@click.option("--frames", type=click.IntRange(0, 4096), default=0, help="Frames of each video, the same for both (0 = the world's 9).")
@json_option
@quiet_option
def bench_stream(student, teacher, num, rounds, chunks, teacher_steps, guidance, student_steps, first_steps, frames,
                 json_path, quiet):
    """Streaming student vs the 50-step CFG teacher, and constant per-chunk cost of a long stream.

    Counted: generating the videos from noise, text encoding and decoding included
    ("with decode"), or denoising only; time to first frame is when the first chunk
    reaches pixels (the teacher's whole video does at once). Chunk latency: the chunk's
    denoising steps and its cache refresh (decode timed apart), with the rolling KV cache
    vs recomputing all earlier frames at every step.

    \b
    Example:
      genrl bench stream --student shapes-student-dmd --teacher shapes-teacher --json stream.json
      genrl bench stream --student-steps 8      # the student at 8 steps per chunk instead of its trained 4
      genrl bench stream --first-steps 8        # its first chunk alone at 8 steps
    """
    at = chunks
    r = stream_report(student, teacher, num, rounds, at, teacher_steps, guidance, quiet, frames, student_steps, first_steps)
    raw, lo, hi = r["raw"], min(at), max(at)
    click.echo("\n".join([
        "| what | student | teacher | student / teacher |", "|---|---|---|---|",
        f"| frames/s with decode | {raw['frames_per_second']['student']:.1f} | {raw['frames_per_second']['teacher']:.2f} | {r['stream.fps_ratio']:.1f}x |",
        f"| frames/s, denoising only | {raw['frames_per_second']['student_nodecode']:.1f} | {raw['frames_per_second']['teacher_nodecode']:.2f} | {r['stream.fps_ratio_nodecode']:.1f}x |",
        f"| time to first frame (s) | {raw['first_frame_seconds']['student']:.3f} | {raw['first_frame_seconds']['teacher']:.3f} | {r['stream.first_frame_latency_ratio']:.1f}x sooner |",
        f"| NFE per frame | {raw['nfe_per_frame']['student']:g} | {raw['nfe_per_frame']['teacher']:g} | {r['stream.nfe_ratio']:.0f}x fewer |",
        "", "| chunk | " + " | ".join(str(k) for k in at) + f" | chunk {hi} / chunk {lo} |", "|---" * (len(at) + 2) + "|",
        "| rolling KV cache (ms) | " + " | ".join(f"{raw['chunk_seconds']['cache'][str(k)] * 1e3:.1f}" for k in at)
        + f" | {r[f'stream.chunk{hi}_over_chunk{lo}']:.2f} |",
        "| no cache, history recomputed (ms) | " + " | ".join(f"{raw['chunk_seconds']['nocache'][str(k)] * 1e3:.1f}" for k in at)
        + f" | {r[f'stream.chunk{hi}_over_chunk{lo}_nocache']:.2f} |",
        f"| decode of one chunk (ms) | {raw['decode_chunk_seconds'] * 1e3:.1f} |" + " |" * len(at)]))
    _write(r, json_path)


# ---------------------------------------------------------------------- train
def train_report(cfg: DistillConfig, steps: int, quiet: bool) -> dict:
    import torch
    from accelerate import Accelerator

    from ..train.trainer import StepContext, seed_everything

    methods = {}
    for name in ("dmd", "stream_r1"):
        seed_everything(cfg.train.seed)
        methods[name] = DISTILL.build(dataclasses.replace(cfg, method=name), quiet=True)
    ctx = StepContext(Accelerator(cpu=not torch.cuda.is_available()), cfg.train)  # as the Trainer builds it
    times = alternate({n: (lambda i, m=m: m.train_step(i, ctx)) for n, m in methods.items()}, steps, "step", quiet)
    from ..memory import saved_bytes

    memory = {n: saved_bytes(lambda m=m: m.generator_loss({}).backward()) for n, m in methods.items()}
    for m in methods.values():
        m.opt.zero_grad(set_to_none=True)
    sec = {n: med(t) for n, t in times.items()}
    return {"train.stream_r1_over_dmd": sec["stream_r1"] / sec["dmd"],
            "train.peak_memory_ratio": memory["stream_r1"] / memory["dmd"],
            "raw": {"step_seconds": sec, "step_seconds_spread": {n: spread(t) for n, t in times.items()},
                    "generator_step_saved_bytes": memory, "steps": steps}}


@bench.command(name="train", context_settings={"show_default": True})
@click.option("--steps", type=click.IntRange(1, 1000), default=5, help="Timed training steps per method (after one warm-up step).")
@json_option
@quiet_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A distill recipe (e.g. configs/stream_r1.yaml; default: the distill defaults).")
def bench_train(steps, json_path, quiet, overrides, config_path):
    """A Stream-R1 training step against a plain DMD step: time and activation memory.

    Both methods are built from the same distill config (Stream-R1 as configured, DMD with
    the same models and seeds) and their steps alternate. Memory is what the generator step
    saves for backward (autograd's saved tensors: the activation memory), Stream-R1's reward
    pass and saliency backward included.

    \b
    Example:
      genrl bench train --config configs/stream_r1.yaml --steps 4 --json train.json
    """
    from ..config import load_config

    r = train_report(load_config(DistillConfig, config_path, overrides), steps, quiet)
    raw = r["raw"]
    click.echo("\n".join([
        "| what | dmd | stream_r1 | ratio |", "|---|---|---|---|",
        f"| training step (s) | {raw['step_seconds']['dmd']:.3f} | {raw['step_seconds']['stream_r1']:.3f} | {r['train.stream_r1_over_dmd']:.2f} |",
        f"| generator step activations (MB) | {raw['generator_step_saved_bytes']['dmd'] / 2**20:.1f} | "
        f"{raw['generator_step_saved_bytes']['stream_r1'] / 2**20:.1f} | {r['train.peak_memory_ratio']:.2f} |"]))
    _write(r, json_path)


# ----------------------------------------------------------------------- grpo
def grpo_report(cfg: GRPOConfig, frames: list[int], steps: int, prompts_per_step: int, quiet: bool) -> dict:
    import torch
    from accelerate import Accelerator

    from ..methods.grpo import build_grpo
    from ..methods.qa import load_policy
    from ..models.vlm import TinyVLM
    from ..train.trainer import StepContext, seed_everything

    ctx = StepContext(Accelerator(cpu=not torch.cuda.is_available()), cfg.train)
    base = load_policy(cfg.grpo.policy)
    out = {"speedup": {}, "seconds": {}, "vision_clips_per_step": {}}
    for f in frames:
        qa = dataclasses.replace(cfg.grpo.qa, frames=f)
        methods = {}
        for name, cached in (("cached", True), ("recomputed", False)):
            seed_everything(cfg.train.seed)
            policy = TinyVLM(dataclasses.replace(base.cfg, frames=f))
            policy.load_state_dict(base.state_dict())
            g = dataclasses.replace(cfg.grpo, qa=qa, cache_video=cached,
                                    prompts_per_step=prompts_per_step or cfg.grpo.prompts_per_step)
            methods[name] = build_grpo(g, cfg.optim, cfg.train.seed, policy=policy)
        times = alternate({n: (lambda i, m=m: m.train_step(i, ctx)) for n, m in methods.items()}, steps, f"grpo {f} frames", quiet)
        sec = {n: med(t) for n, t in times.items()}
        out["seconds"][str(f)] = sec
        out["speedup"][str(f)] = sec["recomputed"] / sec["cached"]
        out["vision_clips_per_step"][str(f)] = {n: m.vision_rows / (steps + 1) for n, m in methods.items()}
    return {**{f"grpo.cached_speedup.{f}": out["speedup"][str(f)] for f in frames},
            "raw": {"step_seconds": out["seconds"], "vision_clips_per_step": out["vision_clips_per_step"],
                    "steps": steps, "group_size": cfg.grpo.group_size,
                    "prompts_per_step": prompts_per_step or cfg.grpo.prompts_per_step}}


@bench.command(name="grpo", context_settings={"show_default": True})
@click.option("--frames", default="8,32,128", callback=int_list, help="Clip lengths to compare at.")
@click.option("--steps", type=click.IntRange(1, 1000), default=2, help="Timed GRPO steps per setting (after one warm-up step).")
@click.option("--prompts-per-step", type=click.IntRange(0, 1024), default=2, help="Questions per step (0 = the config's).")
@json_option
@quiet_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default="configs/grpo_video_qa.yaml", help="A grpo recipe.")
def bench_grpo(frames, steps, prompts_per_step, json_path, quiet, overrides, config_path):
    """A GRPO step with cached video embeddings vs recomputing the vision tower, at several clip lengths.

    The method is built twice per length (grpo.cache_video on and off, same policy and
    seeds) and their steps alternate; the table gives seconds per step, the speed-up and
    the clips the vision tower encoded per step.

    \b
    Example:
      genrl bench grpo --config configs/grpo_video_qa.yaml --frames 8,32,128 --json grpo.json
    """
    from ..config import load_config

    fr = frames
    r = grpo_report(load_config(GRPOConfig, config_path, overrides), fr, steps, prompts_per_step, quiet)
    raw = r["raw"]
    lines = ["| frames | cached (s) | recomputed (s) | speed-up | clips encoded per step (cached / recomputed) |",
             "|---|---|---|---|---|"]
    for f in fr:
        s, v = raw["step_seconds"][str(f)], raw["vision_clips_per_step"][str(f)]
        lines.append(f"| {f} | {s['cached']:.3f} | {s['recomputed']:.3f} | {r[f'grpo.cached_speedup.{f}']:.2f}x | "
                     f"{v['cached']:g} / {v['recomputed']:g} |")
    click.echo("\n".join(lines))
    _write(r, json_path)


# ------------------------------------------------------------------------ wan
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                eps=1e-6)
"""A two-layer random Wan transformer: `--arch tiny` checks the path on a CPU."""


def wan_stream_report(arch: str, frames: int, height: int, width: int, teacher_steps: int, guidance: float,
                      rounds: int, dtype_name: str, quiet: bool) -> dict:
    """A Wan2.1-size streaming student vs its 50-step CFG teacher with random weights (denoising only).

    Text features are random (no UMT5 pass) and nothing is decoded (no VAE): what is timed is the
    transformer work, the same for both. The student streams 3-latent-frame chunks, 4 steps each,
    with a KV cache over the whole video and a cache refresh after every chunk but the last."""
    import types

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from torch import nn

    from ..models.video_model import StreamingConfig
    from ..models.wan import SharedParts, WanConfig, WanVideoModel
    from ..plan import PRESETS

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype_name)
    kw = TINY_WAN if arch == "tiny" else PRESETS[arch][1]
    torch.manual_seed(0)
    with torch.device(dev):
        transformer = WanTransformer3DModel(**kw).to(dtype).eval().requires_grad_(False)

    class _Vae(nn.Module):
        config = types.SimpleNamespace(scale_factor_temporal=4, scale_factor_spatial=8)

    text_dim = kw["text_dim"]

    class _RandomText(WanVideoModel):
        def encode_text(self, prompts):
            h = torch.randn(len(prompts), 512, text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
            mask = torch.arange(512)[None].expand(len(prompts), -1) < 24
            return (h * mask[..., None]).to(dev), mask.to(dev)

    shared = SharedParts(nn.Identity(), None, _Vae(), FlowMatchEulerDiscreteScheduler(shift=5.0))
    latent = (frames - 1) // 4 + 1
    student = _RandomText(WanConfig(height=height, width=width, streaming=StreamingConfig(
        enabled=True, local_frames=latent, sink_frames=0)), transformer, shared)
    teacher = _RandomText(WanConfig(height=height, width=width), transformer, shared)
    prompts = ["a random prompt"]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_student() -> tuple[float, float]:
        sync()
        t0, first = time.perf_counter(), None
        with torch.no_grad():
            for _ in student.stream(prompts, latent, torch.Generator().manual_seed(0)):
                if first is None:
                    sync()
                    first = time.perf_counter() - t0
        sync()
        return time.perf_counter() - t0, first

    def run_teacher(steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher.sample(prompts, latent, steps, guidance, torch.Generator().manual_seed(0))
        sync()
        return time.perf_counter() - t0

    run_student()  # warm-up: kernels, allocator, cache shapes
    run_teacher(2)
    s_times, firsts, t_times = [], [], []
    for i in range(rounds):
        s, f = run_student()
        s_times.append(s)
        firsts.append(f)
        t_times.append(run_teacher(teacher_steps))
        if not quiet:
            click.echo(f"wan round {i + 1}/{rounds}: student {s:.2f} s, teacher {t_times[-1]:.2f} s", err=True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    chunks = -(-latent // 3)
    s_fps, t_fps = frames / med(s_times), frames / med(t_times)
    report = {
        "stream.wan.device": name, "stream.wan.arch": arch, "stream.wan.dtype": dtype_name,
        "stream.wan.student_fps": round(s_fps, 3), "stream.wan.teacher_fps": round(t_fps, 3),
        "stream.wan.fps_ratio": round(s_fps / t_fps, 2),
        "stream.wan.first_chunk_seconds": round(med(firsts), 4),
        "stream.wan.nfe_ratio": round((2 * teacher_steps if guidance > 1 else teacher_steps)
                                      / ((4 * chunks + chunks - 1) / chunks), 2),  # passes per frame, teacher / student
        "stream.wan.peak_memory_gb": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None,
        "raw": {"student_seconds": s_times, "teacher_seconds": t_times, "first_chunk_seconds": firsts,
                "frames": frames, "latent_frames": latent, "height": height, "width": width,
                "teacher_steps": teacher_steps, "guidance": guidance},
    }
    click.echo(f"{arch} ({dtype_name}) on {name}, {frames} frames at {width}x{height}, denoising only (random text "
               f"features, no VAE):")
    click.echo(f"  student {s_fps:.2f} frames/s (first chunk after {med(firsts):.3f} s); teacher ({teacher_steps} steps, "
               f"CFG {guidance:g}) {t_fps:.3f} frames/s; ratio {s_fps / t_fps:.1f}x")
    return report


@bench.command(name="wan", context_settings={"show_default": True})
@click.option("--arch", type=click.Choice(["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "tiny"]), default="wan2.1-t2v-1.3b",
              help="Transformer size (random weights; nothing is loaded).")
@click.option("--frames", type=click.IntRange(5, 1001), default=81, help="Pixel frames (4k+1).")
@click.option("--height", type=click.IntRange(16, 2048), default=480)
@click.option("--width", type=click.IntRange(16, 2048), default=832)
@click.option("--teacher-steps", type=click.IntRange(1, 1000), default=50)
@click.option("--guidance", type=click.FloatRange(1, 50), default=5.0, help="Teacher CFG scale (Wan's default 5).")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, help="Timed rounds after a warm-up round.")
@click.option("--dtype", "dtype_name", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16")
@json_option
@quiet_option
def bench_wan(arch, frames, height, width, teacher_steps, guidance, rounds, dtype_name, json_path, quiet):
    """A Wan2.1-size streaming student vs its CFG teacher, random weights, on this machine's GPU.

    Denoising only: random text features stand in for UMT5 and nothing is decoded, so the
    figure is the transformers' work (the part the anchors' 17 vs 0.78 frames/s is mostly about).

    \b
    Example (one GPU):
      genrl bench wan --arch wan2.1-t2v-1.3b --frames 81 --json wan.json
    """
    if (frames - 1) % 4:
        raise click.BadParameter(f"{frames}: Wan2.1 generates 4k+1 frames (e.g. 81)", param_hint="--frames")
    if height % 16 or width % 16:
        raise click.BadParameter(f"{width}x{height}: sizes must be multiples of 16", param_hint="--height/--width")
    _write(wan_stream_report(arch, frames, height, width, teacher_steps, guidance, rounds, dtype_name, quiet), json_path)


# ------------------------------------------------------------------------- sp
def _sp_worker(rank: int, init: str, out: str, frames: list[int], rounds: int, dim: int, heads: int, side: int) -> None:
    """One of two gloo ranks: a DiT layer's forward + backward at each length, alone (SP=1) and split (SP=2)."""
    import copy

    import torch
    import torch.distributed as dist

    from ..models.dit import DiTConfig, VideoDiT
    from ..parallel import SequenceParallelDiT

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = VideoDiT(DiTConfig(dim=dim, depth=1, heads=heads, text_dim=dim, in_channels=4, patch=2))
    split = copy.deepcopy(layer)
    sp = SequenceParallelDiT(split)
    text, mask = torch.randn(1, 16, dim), torch.ones(1, 16, dtype=torch.bool)
    raw: dict = {}
    for F in frames:
        x, t = torch.randn(1, F, 4, side, side), torch.full((1,), 500.0)

        def one():
            if rank == 0:
                layer(x, t, text, mask, causal=True).square().mean().backward()

        def two():
            y = sp(x, t, text, mask, causal=True)
            own = sp.local_frames(F)
            y[:, own].square().sum().div(y.numel()).backward()

        raw[F] = {"tokens": F * (side // 2) ** 2, **_sp_measure(rank, one, two, rounds)}
        raw[F]["vlm"] = _sp_vlm_layer(rank, F * (side // 2) ** 2, rounds, dim, heads)
        raw[F]["qwen"] = _sp_qwen_layer(rank, F * (side // 2) ** 2, rounds, dim, heads)
        raw[F]["wan"] = _sp_wan_layer(rank, F, side, rounds, dim, heads)
        raw[F]["stream"] = _sp_stream_layer(rank, F, side, rounds, dim, heads)
    if rank == 0:
        Path(out).write_text(json.dumps(raw))
    dist.barrier()  # leave together: a rank that leaves while the other still works can abort at exit
    dist.destroy_process_group()


def _sp_vlm_layer(rank: int, L: int, rounds: int, dim: int, heads: int) -> dict:
    """The VLM's decoder layer (causal, KV heads half the query heads) over ``L`` tokens, SP=1 vs SP=2."""
    import copy

    import torch

    from ..attention import BlockCausal
    from ..models.vlm import TinyVLM, VLMConfig, _angles
    from ..parallel import apply_sequence_parallel_vlm

    torch.manual_seed(0)
    vlm = TinyVLM(VLMConfig(dim=dim, depth=1, heads=heads, kv_heads=max(1, heads // 2), mlp_hidden=4 * dim,
                            vision_depth=1, vision_dim=32, vision_heads=2))
    split = apply_sequence_parallel_vlm(copy.deepcopy(vlm), 2)
    x, real = torch.randn(1, L, dim), torch.ones(1, L, dtype=torch.bool)
    angles = _angles(vlm._positions(real), dim // heads, vlm.cfg.rope_theta)
    per = -(-L // 2)
    own = slice(rank * per, min(L, (rank + 1) * per))

    def one():
        if rank == 0:
            vlm._run_blocks(x, angles, BlockCausal(1)).square().mean().backward()

    def two():
        split._run_blocks(x, angles, BlockCausal(1))[:, own].square().sum().div(L * dim).backward()

    return {"tokens": L, **_sp_measure(rank, one, two, rounds)}


def _sp_qwen_layer(rank: int, L: int, rounds: int, dim: int, heads: int) -> dict:
    """One decoder layer of transformers' Qwen2-VL language model (causal, M-RoPE, KV heads half the query heads)
    over ``L`` tokens, its own attention vs genrl's split (``parallel.sequence`` on a Qwen2-VL policy)."""
    import copy

    import torch
    from transformers import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel

    from ..parallel.qwen import SequenceParallelQwenLM

    half = dim // heads // 2  # M-RoPE sections (temporal, height, width) over half the head dim, as Qwen2-VL's
    temporal = half // 4
    height = (half - temporal) // 2
    section = [temporal, height, half - temporal - height]
    torch.manual_seed(0)
    lm = Qwen2VLTextModel(Qwen2VLTextConfig(vocab_size=16, hidden_size=dim, intermediate_size=4 * dim,
                                            num_hidden_layers=1, num_attention_heads=heads,
                                            num_key_value_heads=max(1, heads // 2), max_position_embeddings=L,
                                            bos_token_id=None, eos_token_id=None, pad_token_id=None,
                                            rope_scaling={"type": "mrope", "mrope_section": section}))
    split = SequenceParallelQwenLM(copy.deepcopy(lm), None)
    x, mask = torch.randn(1, L, dim), torch.ones(1, L, dtype=torch.bool)
    pos = torch.arange(L).view(1, 1, L).expand(3, 1, L)
    per = -(-L // 2)
    own = slice(rank * per, min(L, (rank + 1) * per))

    def one():
        if rank == 0:
            lm(inputs_embeds=x, attention_mask=mask.long(), position_ids=pos).last_hidden_state.square().mean().backward()

    def two():
        split.hidden(x, mask, pos)[:, own].square().sum().div(L * dim).backward()

    return {"tokens": L, **_sp_measure(rank, one, two, rounds)}


def _sp_wan_layer(rank: int, frames: int, side: int, rounds: int, dim: int, heads: int) -> dict:
    """One block of diffusers' Wan2.1 transformer (block-causal over chunks of 3 frames), SP=1 vs SP=2."""
    import copy

    import torch
    from diffusers import WanTransformer3DModel

    from ..models.wan import WanDiT, WanDiTConfig
    from ..parallel import apply_sequence_parallel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
                                        in_channels=4, out_channels=4, text_dim=dim, ffn_dim=4 * dim, num_layers=1,
                                        qk_norm="rms_norm_across_heads", cross_attn_norm=True,
                                        rope_max_seq_len=max(1024, frames))
    wan = WanDiT(transformer, WanDiTConfig(chunk_frames=3))
    split = apply_sequence_parallel(copy.deepcopy(wan), 2)
    x, t, text = torch.randn(1, frames, 4, side, side), torch.full((1,), 500.0), torch.randn(1, 16, dim)
    per = -(-frames // 2)
    own = slice(rank * per, min(frames, (rank + 1) * per))

    def one():
        if rank == 0:
            wan(x, t, text, causal=True).square().mean().backward()

    def two():
        y = split(x, t, text, causal=True)
        y[:, own].square().sum().div(y.numel()).backward()

    return {"tokens": frames * (side // 2) ** 2, **_sp_measure(rank, one, two, rounds)}


def _sp_stream_layer(rank: int, frames: int, side: int, rounds: int, dim: int, heads: int) -> dict:
    """A streaming student's DiT layer rolled out chunk by chunk (3 frames, a KV cache of 9 frames with 3 sinks),
    every chunk's pass kept for backward as DMD's exit step keeps it, SP=1 vs SP=2 (a head-sharded cache)."""
    import copy

    import torch

    from ..models.dit import DiTConfig, VideoDiT
    from ..parallel import apply_sequence_parallel

    torch.manual_seed(0)
    layer = VideoDiT(DiTConfig(dim=dim, depth=1, heads=heads, text_dim=dim, in_channels=4, patch=2, chunk_frames=3))
    split = apply_sequence_parallel(copy.deepcopy(layer), 2)
    x, t = torch.randn(1, frames, 4, side, side), torch.full((1,), 500.0)
    text, mask = torch.randn(1, 16, dim), torch.ones(1, 16, dtype=torch.bool)

    def rollout(dit):
        cache, outs = dit.new_cache((side, side), 9, 3), []
        for lo in range(0, frames, 3):
            outs.append(dit(x[:, lo : lo + 3], t, text, mask, cache=cache))
            cache.writing = True
            with torch.no_grad():
                dit(outs[-1].detach(), torch.zeros(1), text, mask, cache=cache)
            cache.writing = False
        torch.cat(outs, dim=1).square().mean().backward()  # the whole loss on every rank, as DMD computes it

    def one():
        if rank == 0:
            rollout(layer)

    return {"tokens": frames * (side // 2) ** 2, **_sp_measure(rank, one, lambda: rollout(split), rounds)}


def _sp_measure(rank: int, one, two, rounds: int) -> dict:
    """Saved activation bytes of ``one`` (SP=1, rank 0 only) and ``two`` (SP=2, every rank), and their times over
    ``rounds`` alternating rounds after a warm-up round, a barrier on each side."""
    import torch.distributed as dist

    from ..memory import saved_bytes

    mem = {"sp1": saved_bytes(one) if rank == 0 else 0, "sp2": saved_bytes(two)}
    times: dict[str, list[float]] = {"sp1": [], "sp2": []}
    for i in range(rounds + 1):
        for name, fn in (("sp1", one), ("sp2", two)):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            dist.barrier()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {"activation_bytes": mem, "seconds": times}


def _two_processes(worker, *args) -> dict:
    """Run ``worker(rank, init, out, *args)`` as 2 gloo processes; what rank 0 wrote to ``out`` (JSON)."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.json"
        mp.spawn(worker, args=(f"file://{Path(d) / 'rdv'}", str(out), *args), nprocs=2)
        return json.loads(out.read_text())


def sp_report(frames: list[int], rounds: int, dim: int, heads: int, side: int, quiet: bool) -> dict:
    """Per-rank activation memory and time of one DiT layer, SP=1 vs SP=2 (two gloo processes on this machine)."""
    raw = {int(k): v for k, v in _two_processes(_sp_worker, frames, rounds, dim, heads, side).items()}
    report: dict = {"raw": raw}
    rows = []
    for F, whole in raw.items():
        for layer, r in (("dit", whole), ("wan", whole["wan"]), ("stream", whole["stream"]), ("vlm", whole["vlm"]),
                         ("qwen", whole["qwen"])):
            mem = r["activation_bytes"]["sp2"] / r["activation_bytes"]["sp1"]
            t = med(r["seconds"]["sp2"]) / med(r["seconds"]["sp1"])
            report[f"sp.{layer}.activation_ratio.{F}"] = round(mem, 3)
            report[f"sp.{layer}.time_ratio.{F}"] = round(t, 3)
            rows.append((layer, F, r["tokens"], r["activation_bytes"]["sp1"] / 2**20, r["activation_bytes"]["sp2"] / 2**20,
                         mem, med(r["seconds"]["sp1"]), med(r["seconds"]["sp2"]), t))
    if not quiet:
        click.echo(f"one DiT layer and one Wan2.1 transformer block (dim {dim}, {heads} heads, {side}x{side} latents, "
                   f"block-causal), the DiT layer streamed chunk by chunk against a KV cache, and one decoder layer each "
                   f"of genrl's VLM and transformers' Qwen2-VL (dim {dim}, {heads} heads, {max(1, heads // 2)} KV heads, "
                   "causal) over as many tokens, forward + backward, per rank:")
    click.echo(f"{'layer':>5} {'frames':>6} {'tokens':>7} {'act SP1 MB':>11} {'act SP2 MB':>11} {'ratio':>6} {'s SP1':>7} "
               f"{'s SP2':>7} {'ratio':>6}")
    for layer, F, n, a1, a2, m, s1, s2, t in sorted(rows):
        click.echo(f"{layer:>5} {F:>6} {n:>7} {a1:>11.1f} {a2:>11.1f} {m:>6.3f} {s1:>7.3f} {s2:>7.3f} {t:>6.3f}")
    return report


@bench.command(name="sp", context_settings={"show_default": True})
@click.option("--frames", default="8,32,128", callback=int_list, help="Video lengths (latent frames) to measure.")
@click.option("--rounds", type=click.IntRange(1, 100), default=3, help="Timed rounds at each length.")
@click.option("--dim", type=click.IntRange(8, 4096), default=128, help="Width of the DiT layer.")
@click.option("--heads", type=click.IntRange(2, 64), default=4, help="Attention heads (even: split over 2 ranks).")
@side_option
@json_option
@quiet_option
def bench_sp(frames, rounds, dim, heads, side, json_path, quiet):
    """One layer each of the DiT, the Wan2.1 transformer, genrl's VLM and transformers' Qwen2-VL language
    model, and the DiT layer streamed chunk by chunk against a KV cache (a student's rollout), forward +
    backward, with sequence parallelism over 2 processes vs none.

    Per rank: activation memory (bytes of the storages autograd saves for backward) and time
    (median of the alternating rounds, a barrier on each side), at growing lengths; every layer
    runs over as many tokens as the DiT layer. Two gloo processes on CPU.

    \b
    Example:
      genrl bench sp --frames 8,32,128 --json sp.json
    """
    if heads % 2 or dim % heads:
        raise click.BadParameter(f"--heads {heads}: needs an even number dividing --dim {dim}", param_hint="--heads")
    if side % 2:
        raise click.BadParameter(f"--side {side}: needs an even number (patches of 2)", param_hint="--side")
    report = sp_report(frames, rounds, dim, heads, side, quiet)
    _write(report, json_path)


# ---------------------------------------------------------------------- shard
def _shard_worker(rank: int, init: str, out: str, frames: int, rounds: int, dim: int, depth: int, heads: int,
                  side: int) -> None:
    """One of two gloo ranks: a frozen DiT's forward, whole on each rank vs sharded over both (train.shard_frozen)."""
    import copy

    import torch
    import torch.distributed as dist

    from ..models.dit import DiTConfig, VideoDiT
    from ..parallel import local_bytes, shard_frozen

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    whole = VideoDiT(DiTConfig(dim=dim, depth=depth, heads=heads, text_dim=dim, in_channels=4, patch=2)).requires_grad_(False)
    for prm in whole.parameters():
        torch.nn.init.normal_(prm, std=0.02)
    sharded = shard_frozen(copy.deepcopy(whole))
    x, t = torch.randn(2, frames, 4, side, side), torch.full((2,), 500.0)
    text, mask = torch.randn(2, 16, dim), torch.ones(2, 16, dtype=torch.bool)
    times: dict[str, list[float]] = {"whole": [], "sharded": []}
    with torch.no_grad():
        diff = float((sharded(x, t, text, mask) - whole(x, t, text, mask)).abs().max())
        for i in range(rounds + 1):
            for name, m in (("whole", whole), ("sharded", sharded)):
                dist.barrier()
                t0 = time.perf_counter()
                m(x, t, text, mask)
                dist.barrier()
                if i:
                    times[name].append(time.perf_counter() - t0)
    raw = {"weight_bytes": {"whole": local_bytes(whole), "sharded": local_bytes(sharded)}, "seconds": times,
           "max_abs_diff": diff, "tokens": frames * (side // 2) ** 2}
    if rank == 0:
        Path(out).write_text(json.dumps(raw))
    dist.barrier()
    dist.destroy_process_group()


def shard_report(frames: int, rounds: int, dim: int, depth: int, heads: int, side: int, quiet: bool) -> dict:
    """Per-rank weight bytes and forward time of a frozen DiT, whole vs sharded over 2 gloo processes."""
    raw = _two_processes(_shard_worker, frames, rounds, dim, depth, heads, side)
    w, s = raw["weight_bytes"], raw["seconds"]
    report = {"shard.weight_ratio": round(w["sharded"] / w["whole"], 3),
              "shard.time_ratio": round(med(s["sharded"]) / med(s["whole"]), 3),
              "shard.max_abs_diff": raw["max_abs_diff"], "raw": raw}
    if not quiet:
        click.echo(f"a frozen DiT (dim {dim}, depth {depth}, {heads} heads) over {raw['tokens']} tokens x 2 videos, "
                   "forward, per rank of 2:")
    click.echo(f"{'':>8} {'weights MB':>11} {'s (median)':>11} {'spread':>7}")
    for name in ("whole", "sharded"):
        click.echo(f"{name:>8} {w[name] / 2**20:>11.2f} {med(s[name]):>11.4f} {spread(s[name]):>7.4f}")
    click.echo(f"sharded / whole: weights {report['shard.weight_ratio']:.3f}x, time {report['shard.time_ratio']:.3f}x; "
               f"largest output difference {raw['max_abs_diff']:g}")
    return report


@bench.command(name="shard", context_settings={"show_default": True})
@click.option("--depth", type=click.IntRange(1, 128), default=8, help="Blocks of the DiT (each a unit of its own).")
@click.option("--dim", type=click.IntRange(8, 4096), default=256, help="Width of the DiT.")
@click.option("--heads", type=click.IntRange(1, 64), default=4, help="Attention heads.")
@click.option("--frames", type=click.IntRange(1, 4096), default=16, help="Latent frames of each video.")
@side_option
@click.option("--rounds", type=click.IntRange(1, 100), default=5, help="Timed rounds after one warm-up round.")
@json_option
@quiet_option
def bench_shard(frames, rounds, dim, depth, heads, side, json_path, quiet):
    """A frozen DiT sharded over 2 processes (train.shard_frozen) vs whole on each: weights held and forward time.

    Per rank: bytes of the DiT's weights it holds, and the time of a forward pass (median of the
    alternating rounds, a barrier on each side), with the largest difference of the two outputs
    (0: the same numbers). Two gloo processes on CPU, where the gathers go through shared memory;
    on GPUs they go over NVLink or the network.

    \b
    Example:
      genrl bench shard --json shard.json
    """
    if dim % heads or side % 2:
        raise click.BadParameter(f"--dim {dim} must be a multiple of --heads {heads}, and --side even (patches of 2)")
    _write(shard_report(frames, rounds, dim, depth, heads, side, quiet), json_path)


# ---------------------------------------------------------------- shard-policy
def _held_bytes(model, opt) -> int:
    """Bytes of ``model``'s weights, gradients and optimizer state this process holds (its shards when sharded)."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        for t in (p, p.grad):
            if t is not None:
                total += local(t).numel() * local(t).element_size()
    for state in opt.state.values():
        total += sum(local(v).numel() * local(v).element_size() for v in state.values()
                     if isinstance(v, torch.Tensor) and v.dim())
    return total


def _gathered_layer(policy, videos, prompt, ids) -> int:
    """Bytes of the weights a sharded ``policy``'s first decoder layer holds whole while it runs (a scoring pass
    under bf16 autocast, as `--mixed_precision bf16` runs a step)."""
    import torch

    seen = []
    layer = policy.blocks[0]
    hook = layer.register_forward_pre_hook(  # after FSDP's own: the layer is gathered
        lambda m, args: seen.append(sum(p.numel() * p.element_size() for p in m.parameters())))
    ones = torch.ones_like(prompt, dtype=torch.bool)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        policy.logits(policy.encode_video(videos), prompt, ones, ids, torch.ones_like(ids, dtype=torch.bool))
    hook.remove()
    return seen[0]


def _bench_vlm(dim: int, depth: int):
    """The benches' tiny VLM: width ``dim``, ``depth`` decoder layers and vision blocks, 4 heads, 64 words."""
    from ..models.vlm import TinyVLM, VLMConfig

    return TinyVLM(VLMConfig(words=[f"w{i}" for i in range(64)], dim=dim, depth=depth, heads=4, kv_heads=2,
                             mlp_hidden=4 * dim, vision_dim=dim, vision_heads=4))


def _policy_shard_worker(rank: int, init: str, out: str, rounds: int, dim: int, depth: int, rows: int,
                         tokens: int) -> None:
    """One of two gloo ranks: a tiny VLM trained whole on each rank (gradients all-reduced) vs sharded over both
    (train.shard_trained): bytes held, a training step's time and a sampling pass's time."""
    import copy

    import torch
    import torch.distributed as dist

    from ..parallel import shard
    from ..train.trainer import average_gradients, clip_gradients, grad_norm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    whole = _bench_vlm(dim, depth).train()
    sharded = shard(copy.deepcopy(whole))
    models = {"whole": whole, "sharded": sharded}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own batch, as data parallelism has it
    videos = torch.rand(rows, whole.cfg.frames, 3, whole.cfg.height, whole.cfg.width, generator=g)
    prompt = torch.randint(3, len(whole.tokenizer), (rows, 8), generator=g)
    ids = torch.randint(3, len(whole.tokenizer), (rows, tokens), generator=g)
    ones = lambda t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731

    def train(name):
        m, opt = models[name], opts[name]
        lp = m.token_logprobs(m.encode_video(videos), prompt, ones(prompt), ids, ones(ids))
        lp.mean().neg().backward()
        params = [p for p in m.parameters() if p.grad is not None]
        if name == "whole":  # the trainer's data parallelism: one all-reduce of every gradient
            average_gradients(params, 0.0, torch.device("cpu"))
        clip_gradients(params, 1.0, grad_norm(params))
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated, as between the steps of a run

    def sample(name):
        m = models[name]
        with torch.no_grad():
            m.generate(m.encode_video(videos), prompt, ones(prompt), tokens, 1.0, torch.Generator().manual_seed(rank))

    times: dict[str, dict[str, list[float]]] = {k: {"whole": [], "sharded": []} for k in ("step", "sample")}
    for i in range(rounds + 1):
        for kind, fn in (("step", train), ("sample", sample)):
            for name in ("whole", "sharded"):
                dist.barrier()
                t0 = time.perf_counter()
                fn(name)
                dist.barrier()
                if i:
                    times[kind][name].append(time.perf_counter() - t0)
    from ..train.trainer import whole_state_dict

    full = whole_state_dict(sharded)
    gathered = {"float32": _gathered_layer(sharded, videos, prompt, ids),
                "bfloat16": _gathered_layer(shard(copy.deepcopy(whole), torch.bfloat16), videos, prompt, ids)}
    raw = {"held_bytes": {n: _held_bytes(models[n], opts[n]) for n in models}, "seconds": times,
           "gathered_layer_bytes": gathered,
           "params": sum(p.numel() for p in whole.parameters()), "rows": rows, "tokens": tokens}
    if rank == 0:
        raw["max_abs_diff"] = max(float((full[k] - v).abs().max()) for k, v in whole.state_dict().items())
        Path(out).write_text(json.dumps(raw))
    dist.barrier()
    dist.destroy_process_group()


def shard_policy_report(rounds: int, dim: int, depth: int, rows: int, tokens: int, quiet: bool) -> dict:
    """Per-rank bytes, step and sampling time of a trained tiny VLM, whole vs sharded over 2 gloo processes."""
    raw = _two_processes(_policy_shard_worker, rounds, dim, depth, rows, tokens)
    h, s, g = raw["held_bytes"], raw["seconds"], raw["gathered_layer_bytes"]
    report = {"shard_policy.held_ratio": round(h["sharded"] / h["whole"], 3),
              "shard_policy.step_time_ratio": round(med(s["step"]["sharded"]) / med(s["step"]["whole"]), 3),
              "shard_policy.sample_time_ratio": round(med(s["sample"]["sharded"]) / med(s["sample"]["whole"]), 3),
              "shard_policy.max_abs_diff": raw["max_abs_diff"],
              "shard_policy.gathered_bf16_ratio": round(g["bfloat16"] / g["float32"], 3), "raw": raw}
    if not quiet:
        click.echo(f"a trained tiny VLM ({raw['params'] / 1e6:.2f}M parameters, width {dim}, depth {depth}), {rows} rows "
                   f"x {tokens} completion tokens, per rank of 2:")
    click.echo(f"{'':>8} {'held MB':>8} {'step s':>8} {'spread':>7} {'sample s':>9} {'spread':>7}")
    for name in ("whole", "sharded"):
        click.echo(f"{name:>8} {h[name] / 2**20:>8.2f} {med(s['step'][name]):>8.4f} {spread(s['step'][name]):>7.4f} "
                   f"{med(s['sample'][name]):>9.4f} {spread(s['sample'][name]):>7.4f}")
    click.echo(f"sharded / whole: held {report['shard_policy.held_ratio']:.3f}x, step {report['shard_policy.step_time_ratio']:.3f}x, "
               f"sampling {report['shard_policy.sample_time_ratio']:.3f}x; largest weight difference after the steps "
               f"{raw['max_abs_diff']:g}")
    click.echo(f"a decoder layer gathered while it runs: {g['float32'] / 2**10:.1f} KB in float32, {g['bfloat16'] / 2**10:.1f} KB "
               f"in bfloat16 (train.shard_gather under --mixed_precision bf16): "
               f"{report['shard_policy.gathered_bf16_ratio']:.3f}x")
    return report


@bench.command(name="shard-policy", context_settings={"show_default": True})
@click.option("--depth", type=click.IntRange(1, 64), default=4, help="Decoder layers (and vision blocks) of the VLM.")
@click.option("--dim", type=click.IntRange(16, 4096), default=256, help="Width of the VLM (a multiple of 4).")
@click.option("--rows", type=click.IntRange(1, 1024), default=8, help="Rows (prompts x group) a step scores and samples.")
@click.option("--tokens", type=click.IntRange(1, 256), default=16, help="Completion tokens scored and sampled.")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, help="Timed rounds after one warm-up round.")
@json_option
@quiet_option
def bench_shard_policy(rounds, dim, depth, rows, tokens, json_path, quiet):
    """A trained policy sharded over 2 processes (train.shard_trained) vs whole on each: memory and time.

    Per rank: bytes of the weights, gradients and AdamW state it holds; the time of a training step
    (scoring forward, backward, the gradient all-reduce or FSDP's reduce-scatter, clipping, AdamW) and
    of sampling --tokens tokens with the KV cache (the sharded policy gathers every layer at every
    token), medians of alternating rounds with a barrier on each side; the largest difference of the
    weights after the steps (float rounding: the same updates); and the bytes a decoder layer holds
    whole while it runs, gathered in float32 and in bfloat16 (train.shard_gather's default under
    --mixed_precision bf16). Two gloo processes on CPU.

    \b
    Example:
      genrl bench shard-policy --json shard_policy.json
    """
    if dim % 4:
        raise click.BadParameter(f"--dim {dim}: needs a multiple of 4 (4 heads)", param_hint="--dim")
    _write(shard_policy_report(rounds, dim, depth, rows, tokens, quiet), json_path)


# ---------------------------------------------------------------- shard-resume
def _rss(field: str) -> int:
    """This process's resident bytes of a kind (RssAnon: its private memory; RssFile: pages of files it maps)
    from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _trim() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc's malloc_trim), so resident memory
    counts only what is held."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: resident memory may also count freed blocks
        pass


def _resume_worker(rank: int, init: str, out: str, dim: int, depth: int, folder: str, how: str) -> None:
    """One of two gloo ranks holding a sharded tiny VLM and its AdamW state. ``how`` 'save': a step, then the
    whole weights and moments into a checkpoint under ``folder`` (as the trainer writes them); 'whole' or
    'mapped': resume from it as the trainer does (files read whole, or mapped and read shard by shard), and
    the peak of resident memory the resume added."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from ..parallel import shard
    from ..train.checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint
    from ..train.trainer import load_whole_optimizer_state, load_whole_state_dict, whole_state_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = shard(_bench_vlm(dim, depth))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    result: dict = {}
    if how == "save":
        videos = torch.rand(2, model.cfg.frames, 3, model.cfg.height, model.cfg.width)
        ids = torch.randint(3, 60, (2, 4))
        ones = torch.ones_like(ids, dtype=torch.bool)
        model.token_logprobs(model.encode_video(videos), ids, ones, ids, ones).mean().neg().backward()
        opt.step()
        weights, moments = whole_state_dict(model), get_optimizer_state_dict(model, opt, options=full)
        if rank == 0:
            save_checkpoint(Path(folder), 1, {"policy": weights}, {"stateful": {"optimizer": moments}})
            result["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(folder).glob("step_*/*") if f.is_file())
        result["weights"] = {k: v.float().sum().item() for k, v in weights.items()} if rank == 0 else {}
    else:
        path, _ = resumable_checkpoint(Path(folder))  # reads every byte once, as a resume verifies its checksums
        _trim()
        before = {k: _rss(k) for k in ("RssAnon", "RssFile")}
        _, weights, state = load_checkpoint(path, verify=False, mapped=how == "mapped")
        if how == "mapped":  # genrl's resume: each process copies in its own shards
            load_whole_state_dict(model, weights["policy"])
            load_whole_optimizer_state(model, opt, state["stateful"]["optimizer"])
        else:  # torch's whole-state-dict loaders, fed whole tensors read on every process (genrl's resume before)
            set_model_state_dict(model, weights["policy"], options=StateDictOptions(full_state_dict=True))
            set_optimizer_state_dict(model, opt, state["stateful"]["optimizer"], options=full)
        _trim()  # freed memory back to the system: what is left is held
        result["added"] = {k: _rss(k) - b for k, b in before.items()}  # while what was read is still held
        result["own_state_bytes"] = sum(v.to_local().numel() * v.element_size() for s in opt.state.values()
                                        for v in s.values() if v.dim())
        del weights, state
        loaded = whole_state_dict(model)
        result["weights"] = {k: v.float().sum().item() for k, v in loaded.items()} if rank == 0 else {}
    results = [None, None]
    dist.all_gather_object(results, result)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()  # leave together: a rank that leaves while the other still works can abort at exit
    dist.destroy_process_group()


def shard_resume_report(dim: int, depth: int, quiet: bool) -> dict:
    """Host memory a sharded resume holds per process, files read whole vs mapped (2 gloo processes)."""
    import tempfile

    if not Path("/proc/self/status").exists():
        raise UsageError("genrl bench shard-resume reads memory from Linux's /proc/self/status; valid: a Linux machine")
    with tempfile.TemporaryDirectory() as d:
        saved = _two_processes(_resume_worker, dim, depth, d, "save")
        runs = {how: _two_processes(_resume_worker, dim, depth, d, how) for how in ("whole", "mapped")}
    size = saved[0]["checkpoint_bytes"]
    # what a process copied of the checkpoint: private memory the resume added, less its own shards of the AdamW
    # moments (made either way; a GPU run keeps them there). Mapped file pages are the page cache, one copy
    # shared by every process of the machine, clean, and given back under memory pressure
    held = {how: [r["added"]["RssAnon"] - r["own_state_bytes"] for r in rs] for how, rs in runs.items()}
    same = all(runs[how][0]["weights"] == saved[0]["weights"] for how in runs)
    report = {"shard_resume.copied_ratio": round(max(held["mapped"]) / max(held["whole"]), 3), "shard_resume.same_weights": same,
              "raw": {"checkpoint_bytes": size, "copied_bytes": held, "runs": {h: [{k: r[k] for k in ("added", "own_state_bytes")}
                                                                              for r in rs] for h, rs in runs.items()},
                      "dim": dim, "depth": depth}}
    mb = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    if not quiet:
        click.echo(f"a sharded tiny VLM's checkpoint (width {dim}, depth {depth}; whole weights and AdamW moments): "
                   f"{mb(size)} MB; per process of 2, MB:")
    click.echo(f"{'files read':<11} {'rank':>4} {'private added':>13} {'own moments':>11} {'copied':>7} {'file pages mapped':>17}")
    for how, rs in runs.items():
        for rank, r in enumerate(rs):
            click.echo(f"{how:<11} {rank:>4} {mb(r['added']['RssAnon']):>13} {mb(r['own_state_bytes']):>11} "
                       f"{mb(held[how][rank]):>7} {mb(r['added']['RssFile']):>17}")
    click.echo(f"mapped / whole: copied {report['shard_resume.copied_ratio']:.3f}x (private memory beyond the process's "
               f"own moments; mapped pages are the shared page cache); the same weights loaded: {same}")
    return report


@bench.command(name="shard-resume", context_settings={"show_default": True})
@click.option("--depth", type=click.IntRange(1, 64), default=8, help="Decoder layers (and vision blocks) of the VLM.")
@click.option("--dim", type=click.IntRange(16, 4096), default=512, help="Width of the VLM (a multiple of 4).")
@json_option
@quiet_option
def bench_shard_resume(dim, depth, json_path, quiet):
    """Host memory of resuming a sharded policy (train.shard_trained): files read whole vs mapped.

    Two gloo processes shard a tiny VLM and its AdamW state, take a step and write a checkpoint as
    the trainer does (the whole weights and moments). Then, each in two fresh processes, they resume
    from it: reading the files whole on each process (as before), and mapped into memory, each
    process reading only its shards (what a sharded run does now). Prints, per process, the private
    memory the resume added (Linux's /proc/self/status, while what was read is still held), its own
    shards of the moments (made either way; a GPU run keeps them there), what it copied of the
    checkpoint (the first less the second), and the file pages it mapped (the page cache: one copy
    for all processes, given back under memory pressure). Checks that both load the saved weights.

    \b
    Example:
      genrl bench shard-resume --json shard_resume.json
    """
    if dim % 4:
        raise click.BadParameter(f"--dim {dim}: needs a multiple of 4 (4 heads)", param_hint="--dim")
    _write(shard_resume_report(dim, depth, quiet), json_path)


@bench.command(name="all", context_settings={"show_default": True})
@click.option("--rounds", type=click.IntRange(1, 100), default=3, help="Timed rounds or steps of each comparison.")
@json_option
@quiet_option
@click.pass_context
def bench_all(ctx, rounds, json_path, quiet):
    """stream, train and grpo with their defaults, into one JSON (the README's performance table).

    \b
    Example:
      genrl bench all --json bench.json
    """
    from ..config import load_config

    report = {}
    for name, fn in (("stream", lambda: stream_report("shapes-student-dmd", "shapes-teacher", 8, rounds, [2, 8, 32, 64], 50, 4.0, quiet)),
                     ("train", lambda: train_report(load_config(DistillConfig, "configs/stream_r1.yaml"), rounds, quiet)),
                     ("grpo", lambda: grpo_report(load_config(GRPOConfig, "configs/grpo_video_qa.yaml"), [8, 32, 128], max(1, rounds - 1), 2, quiet))):
        r = fn()
        report.update({k: v for k, v in r.items() if k != "raw"})
        report[f"{name}.raw"] = r["raw"]
    click.echo(json.dumps({k: v for k, v in report.items() if not k.endswith(".raw")}, indent=2))
    _write(report, json_path)
