"""Command paths that only ran by hand before: `genrl sample`'s success path, autoencoder pretraining,
ODE-init and reward-model resume, Ctrl-C checkpointing, the open_clip weights loader, report contents."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from test_distill_runs import TINY, assets  # noqa: F401 - the tiny teacher fixture


def _same(a_file, b_file) -> bool:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- sample
def test_sample_writes_exactly_the_frames_the_student_generates(run_cli, tmp_path):
    import imageio.v3 as iio

    from genrl.generation import SamplingConfig, generate
    from genrl.io.video import read_video, to_uint8
    from genrl.models.registry import load_model

    caption = "a large red circle moving left slowly on a dark background"
    code, out, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", caption, "--frames", "9",
                             "--seed", "3", "--scale", "1", "--frames-dir", str(tmp_path / "png"),
                             "--out", str(tmp_path / "x.gif"))
    assert code == 0, err
    assert "1 video(s) x 9 frames" in out and "NFE/frame" in out
    want = to_uint8(generate(load_model("shapes-student-dmd"), [caption], 9, SamplingConfig(50, 4.0), 3).videos[0])
    pngs = sorted((tmp_path / "png" / "video_000").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(9)]
    assert all(torch.equal(torch.from_numpy(iio.imread(p)), torch.as_tensor(want[i])) for i, p in enumerate(pngs))
    gif = read_video(tmp_path / "x.gif")
    assert gif.shape[0] == 9 and gif.shape[-2:] == (32, 32)


def test_sample_out_dir_writes_one_file_per_video_that_resumes_and_feeds_score(run_cli, tmp_path):
    from genrl.io.video import read_video

    prompts = tmp_path / "p.txt"
    caps = ["a large red circle moving left slowly on a dark background", "a blue square going up",
            "a large red circle moving left slowly on a dark background"]  # a repeat is made once
    prompts.write_text("\n".join(caps) + "\n")
    out = tmp_path / "vids"
    args = ["sample", "--model", "shapes-student-dmd", "--prompts", str(prompts), "--samples", "2", "--seed", "5",
            "--scale", "1", "--out-dir", str(out), "--quiet"]
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert "wrote 4 video(s)" in stdout and "1 repeated prompt(s) made once" in stdout
    names = sorted(f.name for f in out.glob("*.mp4"))
    assert names == sorted(f"{c}-{i}.mp4" for c in caps[:2] for i in (0, 1))
    manifest = [line.split("\t") for line in (out / "prompts.tsv").read_text().splitlines()]
    assert sorted(manifest) == sorted([f"{c}-{i}.mp4", c] for c in caps[:2] for i in (0, 1))
    # sample i of a prompt is the video `--prompt P --seed 5+i --out FILE` writes, whatever else is in the list
    code, _, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", caps[1], "--seed", "6", "--scale", "1",
                           "--out", str(tmp_path / "one.mp4"), "--quiet")
    assert code == 0, err
    alone = read_video(tmp_path / "one.mp4")
    assert torch.equal(read_video(out / f"{caps[1]}-1.mp4"), alone)
    assert not torch.equal(read_video(out / f"{caps[1]}-0.mp4"), alone)
    # a resumed run makes only what is missing, and makes it the same
    (out / f"{caps[1]}-1.mp4").unlink()
    stamp = (out / f"{caps[0]}-0.mp4").stat().st_mtime_ns
    code, stdout, err = run_cli(*args)
    assert code == 0 and "wrote 1 video(s)" in stdout and "3 already there, kept" in stdout, err
    assert (out / f"{caps[0]}-0.mp4").stat().st_mtime_ns == stamp
    assert torch.equal(read_video(out / f"{caps[1]}-1.mp4"), alone)
    # other settings into the same folder would mix two models' videos: refused, naming what differs
    code, _, err = run_cli(*args[:-1], "--steps", "8", "--quiet")
    assert code == 2 and "holds videos made with other settings (steps=None there, 8 now)" in err
    assert len(list(out.glob("*.mp4"))) == 4
    # another prompt added later: its video joins the manifest, the earlier lines stay
    (tmp_path / "q.txt").write_text("a yellow circle\n")
    code, stdout, err = run_cli(*[str(tmp_path / "q.txt") if a == str(prompts) else a for a in args])
    assert code == 0 and "wrote 2 video(s)" in stdout, err
    assert len((out / "prompts.tsv").read_text().splitlines()) == 6
    for f in out.glob("a yellow circle-*.mp4"):
        f.unlink()
    # the manifest is what `genrl score --prompts` reads; a stale hidden temp file is not a video
    (out / ".half.tmp.mp4").write_bytes(b"")
    code, stdout, err = run_cli("score", str(out), "--prompts", str(out / "prompts.tsv"), "--format", "json", "--quiet")
    assert code == 0, err
    rows = json.loads(stdout)
    assert len(rows) == 4 and all(r["prompt"] in caps and r["ta"] is not None for r in rows)
    assert len((out / "prompts.tsv").read_text().splitlines()) == 6  # lines of deleted files go at the next run


def test_sample_file_names_are_safe_and_distinct():
    from genrl.cli.sample import video_names

    long = "a " * 200
    names = video_names(["a red/blue square", "a red blue square", "", ".hidden", long, "x\ny  z"])
    assert len(set(names.values())) == 6
    assert names["x\ny  z"] == "x y z"
    for p, n in names.items():
        assert "/" not in n and not n.startswith(".") and len(n.encode()) <= 180 and n.strip() == n
    assert names["a red/blue square"] != "a red blue square"  # both map to one stem, so both get a hash
    assert names[""].startswith("prompt-") and len(names[""]) == len("prompt-") + 8


def test_default_enlargement_reaches_128_pixels_on_the_short_side():
    from genrl.cli.sample import display_scale

    assert [display_scale(torch.zeros(9, 3, h, w)) for h, w in ((32, 32), (100, 200), (480, 832), (8, 64))] == [4, 2, 1, 16]


@pytest.mark.parametrize("extra, message", [
    ([], "give exactly one of --out FILE"),
    (["--out", "x.gif", "--out-dir", "d"], "give exactly one of --out FILE"),
    (["--out-dir", "d", "--frames-dir", "f"], "--frames-dir writes the frames of one batch"),
])
def test_sample_output_arguments_are_one_line_errors(run_cli, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", "a red square", *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_sample_grid_with_several_samples_holds_each_seed(run_cli, tmp_path):
    from genrl.io.video import read_video

    cap = "a small green triangle moving right quickly on a light background"
    for seed in (0, 1):
        code, _, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", cap, "--seed", str(seed),
                               "--scale", "1", "--out", str(tmp_path / f"s{seed}.gif"), "--quiet")
        assert code == 0, err
    code, out, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", cap, "--samples", "2",
                             "--scale", "1", "--out", str(tmp_path / "grid.gif"), "--quiet")
    assert code == 0 and "2 video(s)" in out, err
    grid = read_video(tmp_path / "grid.gif")
    singles = [read_video(tmp_path / f"s{seed}.gif") for seed in (0, 1)]
    # the two samples side by side, seed 0 then seed 1 (tiles 6 px apart, 3 px in; GIF palettes differ slightly)
    h, w = singles[0].shape[-2:]
    tiles = [grid[..., :h, 3 + k * (w + 6) : 3 + k * (w + 6) + w] for k in range(2)]
    err = [[float((t - s).abs().mean()) for s in singles] for t in tiles]
    assert err[0][0] < 0.02 and err[1][1] < 0.02 and err[0][1] > 5 * err[0][0] and err[1][0] > 5 * err[1][1], err


# -------------------------------------------------------------------------------- autoencoder
AE = ["method=autoencoder", "autoencoder.model.width=8", "autoencoder.batch_size=2", "world.frames=3",
      "optim.lr=3e-3", "optim.warmup_steps=0", "train.log_every=1", "train.checkpoint_every=2", "--quiet"]


def _recon_error(weights: str) -> float:
    from genrl.models.registry import load_model
    from genrl.worlds.shapes import ShapesWorld, WorldConfig

    ae = load_model(weights, kind="autoencoder")
    video, _, _ = ShapesWorld(WorldConfig(frames=3)).clips("val", range(16))
    with torch.no_grad():
        return float(((ae.decode(ae.encode(video)) - video) ** 2).mean())


def test_autoencoder_pretraining_lowers_val_reconstruction_error_and_resumes_exactly(run_cli, tmp_path):
    code, _, err = run_cli("pretrain", f"out_dir={tmp_path / 'z'}", "train.steps=0", *AE)  # the untrained start
    assert code == 0, err
    code, _, err = run_cli("pretrain", f"out_dir={tmp_path / 'a'}", "train.steps=40", *AE)
    assert code == 0, err
    assert _recon_error(str(tmp_path / "a" / "model.safetensors")) < 0.85 * _recon_error(str(tmp_path / "z" / "model.safetensors"))
    for steps in (3, 4):  # stopped at step 3 (a checkpoint at 2, one at 3 on the way out), resumed to 4
        assert run_cli("pretrain", f"out_dir={tmp_path / 'b'}", f"train.steps={steps}", *AE)[0] == 0
    assert run_cli("pretrain", f"out_dir={tmp_path / 'c'}", "train.steps=4", *AE)[0] == 0
    assert _same(tmp_path / "b" / "checkpoints" / "step_0000004" / "autoencoder.safetensors",
                 tmp_path / "c" / "checkpoints" / "step_0000004" / "autoencoder.safetensors")


# ------------------------------------------------------------------- ODE init and reward resume
def test_ode_init_resume_is_bit_identical(run_cli, tmp_path, assets):
    teacher, _ = assets
    for out, steps in (("a", 3), ("b", 2), ("b", 3)):
        code, _, err = run_cli("distill", "--config", "configs/ode_init.yaml", f"out_dir={tmp_path / out}",
                               f"teacher={teacher}", f"train.steps={steps}", "optim.warmup_steps=0", *TINY)
        assert code == 0, err
    assert _same(tmp_path / "a" / "checkpoints" / "step_0000003" / "student.safetensors",
                 tmp_path / "b" / "checkpoints" / "step_0000003" / "student.safetensors")


REWARD = ["reward.model.width=8", "reward.model.dim=16", "reward.batch_size=4", "reward.eval_pairs=8",
          "world.frames=4", "optim.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=1",
          "train.sample_every=0", "--quiet"]


def test_reward_model_training_resume_is_bit_identical(run_cli, tmp_path):
    for out, steps in (("a", 3), ("b", 2), ("b", 3)):
        code, _, err = run_cli("train-reward", f"out_dir={tmp_path / out}", f"train.steps={steps}", *REWARD)
        assert code == 0, err
    a, b = (tmp_path / x / "checkpoints" / "step_0000003" / "reward.safetensors" for x in "ab")
    assert _same(a, b)
    start = tmp_path / "b" / "checkpoints" / "step_0000002" / "reward.safetensors"
    assert not _same(a, start)  # the resumed step really trained


# ----------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_checkpoints_the_finished_step_and_the_resumed_run_equals_a_straight_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = tmp_path / "int"
    base = [sys.executable, "-m", "genrl.cli", "pretrain", *AE[:-1], "train.checkpoint_every=1000"]
    proc = subprocess.Popen([*base, f"out_dir={run}", "train.steps=1000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    (ckpt,) = (run / "checkpoints").glob("step_*")
    k = int(ckpt.name.split("_")[1])
    logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert k >= 2 and logged == list(range(1, k + 1))  # every finished step logged once, the last one saved
    for out in (run, tmp_path / "straight"):
        r = subprocess.run([*base, f"out_dir={out}", f"train.steps={k + 2}", "--quiet"], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    assert _same(run / "model.safetensors", tmp_path / "straight" / "model.safetensors")


# ------------------------------------------------------------------------------ open_clip loader
def test_clip_reward_loads_a_local_open_clip_file_and_scores_like_the_model_it_came_from(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from rewards.clip import ClipReward, clip_reward

    cfg = {"embed_dim": 32,
           "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "genrl-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "genrl-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("genrl-tiny-clip").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    loaded = clip_reward(weights=str(tmp_path / "tiny.pt"), model="genrl-tiny-clip")
    direct = ClipReward(model, open_clip.get_tokenizer("genrl-tiny-clip"), 64)
    other = ClipReward(open_clip.create_model("genrl-tiny-clip").eval(), direct.tokenizer, 64)
    v = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a small red square moving left", "a large blue circle"]
    with torch.no_grad():
        a, b, c = loaded(v, prompts), direct(v, prompts), other(v, prompts)
    for ax in ("mq", "ta"):
        torch.testing.assert_close(a.raw[ax], b.raw[ax])
    assert float((a.raw["ta"] - c.raw["ta"]).abs().max()) > 1e-4  # another init differs: the file was read


# -------------------------------------------------------------------------------------- report
def test_report_tabulates_the_eval_and_the_final_step_it_was_given(tmp_path):
    from genrl.report import write_report

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": 1, "time": 1.0, "loss": 2.5, "grad_norm": 0.75},
            {"step": 2, "time": 2.0, "loss": 1.25, "grad_norm": 0.5},
            {"step": 2, "time": 2.1, "sample_prompt_accuracy": 0.625}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"prompt_accuracy": 0.8125, "reward": {"vq": -0.25}}))
    text = write_report(run).read_text()
    assert "| eval.json | prompt_accuracy | 0.8125 |" in text and "| eval.json | reward.vq | -0.25 |" in text
    final = json.loads(text.split("## Final step")[1].split("```")[1])
    assert final == rows[1]
    assert "## Last periodic evaluation (step 2)" in text and "| sample_prompt_accuracy | 0.625 |" in text
    assert "![losses](plots/losses.png)" in text and (run / "plots" / "losses.png").stat().st_size > 1000


def test_report_command_rebuilds_each_run_and_refuses_a_folder_that_is_not_one(run_cli, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for i, run in enumerate(runs):
        run.mkdir()
        rows = [{"step": s, "time": float(s), "loss": 1.0 / (s + i), "grad_norm": 0.5} for s in (1, 2, 3)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # cut by a kill
    code, out, err = run_cli("report", *map(str, runs))
    assert code == 0, err
    for i, run in enumerate(runs):
        text = (run / "report.md").read_text()
        assert json.loads(text.split("## Final step")[1].split("```")[1])["loss"] == 1.0 / (3 + i)
        assert (run / "plots" / "losses.png").stat().st_size > 1000 and f"wrote {run / 'report.md'} (2 plot(s))" in out
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", str(runs[0]), str(tmp_path / "empty"))
    assert code == 2 and "empty: not a run folder (no metrics.jsonl)" in err and err.count("\n") == 1


# ------------------------------------------------------------------------- --checkpoint forms
def test_checkpoint_accepts_a_run_folder_a_checkpoint_folder_and_a_weights_file(run_cli, tmp_path, assets):
    from safetensors.torch import save_file

    from genrl.models.registry import load_model

    teacher, _ = assets
    run = tmp_path / "run"
    code, _, err = run_cli("distill", f"out_dir={run}", f"teacher={teacher}", *TINY, "method=dmd", "train.steps=2",
                           "dmd.ema_decay=0.5")
    assert code == 0, err
    ckpt = run / "checkpoints" / "step_0000001"
    forms = {"run": run, "checkpoint": ckpt, "file": run / "model.safetensors"}
    states = {k: load_model(str(p), kind="video_model").state_dict() for k, p in forms.items()}
    ema1 = load_file(str(ckpt / "ema.safetensors"))
    assert all(torch.equal(states["checkpoint"][k], ema1[k]) for k in ema1)  # the step-1 EMA
    assert all(torch.equal(states["run"][k], states["file"][k]) for k in ema1)
    assert any(not torch.equal(states["run"][k], ema1[k]) for k in ema1)  # the run folder is the final export
    for p in forms.values():
        code, out, err = run_cli("sample", "--checkpoint", str(p), "--prompt", "a red square", "--frames", "6",
                                 "--steps", "2", "--out", str(tmp_path / "x.gif"))
        assert code == 0 and "1 video(s) x 6 frames" in out, err

    # weights that do not fit their recorded config: one line naming the key
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, str(tmp_path / "cut.safetensors"), metadata=meta)
    code, _, err = run_cli("sample", "--checkpoint", str(tmp_path / "cut.safetensors"), "--prompt", "x",
                           "--out", str(tmp_path / "y.gif"))
    assert code == 2 and f"key {first!r} is missing" in err and len(err.strip().splitlines()) == 1
