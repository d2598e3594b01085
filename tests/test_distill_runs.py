import json
import math

import pytest
import torch
from safetensors.torch import load_file

from genrl.models.registry import save_weights
from rewards.shapes import ShapesReward, ShapesRewardConfig

from tiny import tiny_video_model

TINY = ["dmd.batch_size=2", "dmd.critic_ratio=2", "dmd.num_samples=2", "world.frames=6", "streaming.local_frames=6",
        "streaming.sink_frames=3", "train.log_every=1", "train.checkpoint_every=1", "ode.num_pairs=4",
        "ode.batch_size=2", "ode.teacher_steps=2", "ode.num_samples=2", "--quiet"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    m = tiny_video_model(seed=0)
    teacher = str(save_weights(m, d / "teacher.safetensors", "video_model", m.cfg))
    torch.manual_seed(0)
    rc = ShapesRewardConfig(width=8, dim=16)
    reward = str(save_weights(ShapesReward(rc), d / "reward.safetensors", "shapes_reward", rc))
    return teacher, reward


def _distill(run_cli, out, teacher, *extra):
    code, stdout, err = run_cli("distill", f"out_dir={out}", f"teacher={teacher}", *TINY, *extra)
    assert code == 0, err
    return stdout


def test_dmd_resume_is_bit_identical(run_cli, tmp_path, assets):
    teacher, _ = assets
    _distill(run_cli, tmp_path / "a", teacher, "method=dmd", "train.steps=3")
    _distill(run_cli, tmp_path / "b", teacher, "method=dmd", "train.steps=2")
    _distill(run_cli, tmp_path / "b", teacher, "method=dmd", "train.steps=3")
    for name in ("student", "critic", "ema"):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_stream_r1_recipe_runs_ode_init_first_and_logs_weights(run_cli, tmp_path, assets):
    teacher, reward = assets
    _distill(run_cli, tmp_path / "s", teacher, "method=stream_r1", "ode_init_first=true", "ode.stage_steps=2",
             "train.steps=2", f"stream_r1.reward_weights={reward}", "eval_num=2")
    run = tmp_path / "s"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["num_videos"] == 2 and set(ev["reward"]) == {"vq", "mq", "ta", "overall"}
    assert "prompt_accuracy" in (run / "report.md").read_text()
    assert (run / "ode_init" / "model.safetensors").exists() and (run / "model.safetensors").exists()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert len(step_rows) == 2
    for r in step_rows:
        assert {"reward_vq", "reward_mq", "reward_ta", "rollout_weight_max", "temporal_w0", "critic_loss"} <= set(r)
        temporal = [r[f"temporal_w{f}"] for f in range(6)]
        assert abs(sum(temporal) / 6 - 1) < 1e-4 and min(temporal) > 0
    assert (run / "report.md").exists() and (run / "plots" / "temporal_weights.png").exists()


def test_stream_r1_with_beta_zero_and_no_intra_matches_dmd(run_cli, tmp_path, assets):
    teacher, reward = assets
    _distill(run_cli, tmp_path / "d", teacher, "method=dmd", "train.steps=1")
    _distill(run_cli, tmp_path / "s", teacher, "method=stream_r1", "stream_r1.beta=0", "stream_r1.intra=false",
             "train.steps=1", f"stream_r1.reward_weights={reward}")
    a = load_file(str(tmp_path / "d" / "checkpoints" / "step_0000001" / "student.safetensors"))
    b = load_file(str(tmp_path / "s" / "checkpoints" / "step_0000001" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_reports_drift_rewards_and_cost_for_a_streaming_student(run_cli, tmp_path, assets):
    _, reward = assets
    m = tiny_video_model(seed=1, streaming=True)
    student = str(save_weights(m, tmp_path / "student.safetensors", "video_model", m.cfg))
    out = tmp_path / "e.json"
    code, _, err = run_cli("eval", "--checkpoint", student, "--num", "3", "--batch", "2", "--frames", "12",
                           "--reward", reward, "--out", str(out), "--quiet")
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["num_videos"] == 3 and r["frames"] == 12 and r["nfe_per_frame"] == 5.0  # 4 steps + cache pass
    assert 0 <= r["prompt_accuracy"] <= 1 and r["first_quarter_accuracy"] is not None
    z = r["reward"]
    assert set(z) == {"vq", "mq", "ta", "overall"}
    assert abs(z["overall"] - (z["vq"] + z["mq"] + z["ta"]) / 3) < 1e-5 and z["vq"] != 0


def test_dmd_trains_on_longer_than_window_rollouts(run_cli, tmp_path, assets):
    teacher, _ = assets
    _distill(run_cli, tmp_path / "long", teacher, "method=dmd", "train.steps=2", "dmd.max_rollout_frames=12")
    rows = [json.loads(l) for l in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    from distill.recipe import DistillConfig, build_method
    from genrl.worlds.shapes import WorldConfig
    from genrl.models.video_model import StreamingConfig
    from distill.dmd import DMDConfig

    cfg = DistillConfig(method="dmd", teacher=teacher, world=WorldConfig(frames=6),
                        streaming=StreamingConfig(enabled=True, local_frames=6, sink_frames=3),
                        dmd=DMDConfig(batch_size=1, max_rollout_frames=12))
    method = build_method(cfg, quiet=True)
    g = torch.Generator().manual_seed(0)
    assert sorted({method.rollout_frames(g) for _ in range(60)}) == [6, 9, 12]  # whole chunks, world length up
    x = torch.arange(12.0).view(1, 12)
    assert method.window(x).tolist() == [[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]]


def test_sweep_runs_variants_by_seeds_and_tabulates_mean_and_spread(run_cli, tmp_path, assets):
    teacher, reward = assets
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: stream_r1\nteacher: " + teacher + "\nstream_r1:\n  reward_weights: " + reward + "\n")
    plan = tmp_path / "sweep.yaml"
    plan.write_text(
        f"out_dir: {tmp_path / 'sw'}\nrecipe: {recipe}\nseeds: [0, 1]\n"
        "overrides: [" + ", ".join(t for t in TINY if t != "--quiet") + ", train.steps=1]\n"
        "variants:\n  dmd: [stream_r1.beta=0, stream_r1.intra=false]\n  full: []\n"
        f"eval:\n  num: 2\n  rewards: [{reward}]\n")
    code, out, err = run_cli("sweep", "--config", str(plan), "--quiet")
    assert code == 0, err
    sw = tmp_path / "sw"
    summary = json.loads((sw / "results.json").read_text())
    for variant in ("dmd", "full"):
        evals = [json.loads((sw / variant / f"seed_{s}" / "eval.json").read_text()) for s in (0, 1)]
        accs = [e["prompt_accuracy"] for e in evals]
        mean, std = summary["variants"][variant]["prompt_accuracy"]
        assert abs(mean - sum(accs) / 2) < 1e-9 and abs(std - abs(accs[0] - accs[1]) / math.sqrt(2)) < 1e-9
        vq = [e["reward"]["vq"] for e in evals]
        assert abs(summary["variants"][variant]["vq"][0] - sum(vq) / 2) < 1e-9
    assert "| dmd |" in out and (sw / "results.png").exists() and (sw / "results.csv").exists()
    # paired differences: full - dmd, video for video (2 prompts x 2 sampling seeds) and seed for seed
    full = [json.loads((sw / "full" / f"seed_{s}" / "eval.json").read_text()) for s in (0, 1)]
    dmd = [json.loads((sw / "dmd" / f"seed_{s}" / "eval.json").read_text()) for s in (0, 1)]
    assert all(e["num_videos"] == 4 and e["sampling_seeds"] == [0, 1] for e in full + dmd)
    named = full[0]["per_video"]["named"]  # the same 2 prompts at each sampling seed, concatenated seed by seed
    assert len(named) == 4 and named[:2] == named[2:] and all(e["per_video"]["named"] == named for e in full + dmd)
    by_hand = sum(f - d for ef, ed in zip(full, dmd) for f, d in zip(ef["per_video"]["rewards"][reward]["vq"],
                                                                     ed["per_video"]["rewards"][reward]["vq"])) / 8
    mean, lo, hi = summary["paired"]["full"]["vq"]
    assert summary["baseline"] == "dmd" and abs(mean - by_hand) < 1e-6 and lo <= mean <= hi
    assert "Paired difference to dmd" in out
    # training diagnostics: plain DMD's weights are all 1 (effective batch = batch size), the full variant's
    # figures are its metrics.jsonl's, and the AUC is the eval's for the training reward
    diag = summary["diagnostics"]
    assert diag["dmd"]["ess"] == [2.0, 0.0] and "saliency_on_object" not in diag["dmd"]
    rows = [[json.loads(l) for l in (sw / "full" / f"seed_{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in (0, 1)]
    ess = [sum(r["rollout_ess"] for r in rs if "rollout_ess" in r) / sum("rollout_ess" in r for r in rs) for rs in rows]
    assert abs(diag["full"]["ess"][0] - sum(ess) / 2) < 1e-9 and 1.0 <= diag["full"]["ess"][0] < 2.0
    sal = [next(r["saliency_on_object"] for r in rs if "saliency_on_object" in r) for rs in rows]
    assert abs(diag["full"]["saliency_on_object"][0] - sum(sal) / 2) < 1e-9 and 0.0 <= sal[0] <= 1.0
    aucs = [e["reward_probe_auc"][reward] for e in full]
    if None in aucs:  # no AUC when every video of a run is probe-right or every one wrong: left out, not averaged
        assert "reward_probe_auc" not in diag["full"]
    else:
        assert abs(diag["full"]["reward_probe_auc"][0] - sum(aucs) / 2) < 1e-9
    assert "Training diagnostics" in out and "| full |" in out.split("Training diagnostics")[1]
    # the two variants differ only in the weighting, so their students differ after a step
    a = load_file(str(sw / "dmd" / "seed_0" / "model.safetensors"))
    b = load_file(str(sw / "full" / "seed_0" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    before = (sw / "dmd" / "seed_0" / "eval.json").stat().st_mtime_ns
    code, _, err = run_cli("sweep", "--config", str(plan), "--quiet")  # finished runs are skipped
    assert code == 0, err
    assert (sw / "dmd" / "seed_0" / "eval.json").stat().st_mtime_ns == before


def test_bench_train_reports_both_methods_and_their_ratios(run_cli, tmp_path, assets):
    teacher, reward = assets
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli("bench", "train", f"teacher={teacher}", f"stream_r1.reward_weights={reward}",
                                *[t for t in TINY if t != "--quiet"], "--steps", "1", "--json", str(out), "--quiet")
    assert code == 0, err
    r = json.loads(out.read_text())
    s, mem = r["raw"]["step_seconds"], r["raw"]["generator_step_saved_bytes"]
    assert s["dmd"] > 0 and s["stream_r1"] > 0 and abs(r["train.stream_r1_over_dmd"] - s["stream_r1"] / s["dmd"]) < 1e-12
    # Stream-R1's generator step keeps the same student graph plus the reward pass: more saved for backward
    assert mem["stream_r1"] > mem["dmd"] > 0 and abs(r["train.peak_memory_ratio"] - mem["stream_r1"] / mem["dmd"]) < 1e-12
    assert "| training step (s) |" in stdout


def test_bench_stream_reports_the_stable_keys(run_cli, tmp_path, assets):
    teacher, _ = assets
    m = tiny_video_model(seed=1, streaming=True)
    student = save_weights(m, tmp_path / "student.safetensors", "video_model", m.cfg)
    out = tmp_path / "stream.json"
    code, stdout, err = run_cli("bench", "stream", "--student", str(student), "--teacher", teacher, "--num", "2",
                                "--rounds", "1", "--chunks", "2,4", "--teacher-steps", "3", "--json", str(out), "--quiet")
    assert code == 0, err
    r = json.loads(out.read_text())
    assert {"stream.fps_ratio", "stream.first_frame_latency_ratio", "stream.nfe_ratio", "stream.chunk4_over_chunk2",
            "stream.chunk4_over_chunk2_nocache"} <= set(r)
    assert r["stream.nfe_ratio"] == 6 / 5  # 3 CFG steps (6 evaluations) vs 4 steps + the cache refresh
    raw = r["raw"]
    assert abs(r["stream.fps_ratio"] - raw["frames_per_second"]["student"] / raw["frames_per_second"]["teacher"]) < 1e-9
    code, _, err = run_cli("bench", "stream", "--student", str(student), "--teacher", teacher, "--num", "2",
                           "--rounds", "1", "--chunks", "2", "--teacher-steps", "3", "--student-steps", "2",
                           "--json", str(out), "--quiet")
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["stream.nfe_ratio"] == 6 / 3 and r["raw"]["student_timesteps"] == [1000.0, 500.0]  # 2 steps + refresh
    code, _, err = run_cli("bench", "stream", "--student", str(student), "--teacher", teacher, "--num", "2",
                           "--rounds", "1", "--chunks", "2", "--teacher-steps", "3", "--first-steps", "3",
                           "--json", str(out), "--quiet")
    assert code == 0, err
    raw = json.loads(out.read_text())["raw"]
    assert raw["student_first_chunk_timesteps"] == [1000.0, 2000 / 3, 1000 / 3] and len(raw["student_timesteps"]) == 4


def test_ode_init_with_teacher_forcing_on_real_clips_adds_its_loss(run_cli, tmp_path, assets):
    teacher, _ = assets
    _distill(run_cli, tmp_path / "o", teacher, "method=ode_init", "train.steps=2", "ode.real_weight=0.5",
             "train.grad_clip=0")
    rows = [json.loads(l) for l in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["real_loss"] > 0 and abs(r["loss"] - (r["ode_loss"] + 0.5 * r["real_loss"])) < 1e-5


def test_ode_init_coupled_pairs_add_a_first_chunk_loss(run_cli, tmp_path, assets):
    teacher, _ = assets
    run = tmp_path / "c"
    _distill(run_cli, run, teacher, "method=ode_init", "train.steps=2", "ode.coupled_weight=0.5", "train.grad_clip=0")
    steps = [r for r in (json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["coupled_loss"] > 0 and abs(r["loss"] - (r["ode_loss"] + 0.5 * r["coupled_loss"])) < 1e-5
    plain, coupled = torch.load(run / "ode_pairs.pt"), torch.load(run / "ode_pairs_coupled.pt")
    assert plain["states"].shape == coupled["states"].shape and not torch.equal(plain["states"], coupled["states"])
    # the coupled pairs' noise (their first level, sigma 1) is a function of the first chunk's
    from distill.ode_init import coupled_noise

    noise, chunk = coupled["states"][:, 0], 3
    assert torch.allclose(noise, coupled_noise(noise[:, :chunk], noise.shape[1], chunk, 0 + 4_242), atol=1e-5)


def test_coupled_noise_rotates_the_first_chunk_into_the_later_ones():
    from distill.ode_init import coupled_noise

    first = torch.randn(2000, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    n = coupled_noise(first, 8, 3, seed=5)
    assert n.shape == (2000, 8, 2, 2, 2) and torch.equal(n[:, :3], first)
    full = [n[:, 3:6].flatten(1), n[:, 6:9].flatten(1)]
    assert torch.allclose(full[0].norm(dim=1), first.flatten(1).norm(dim=1), atol=1e-4)  # a rotation keeps norms
    for later in (n[:, 3:6], n[:, 6:8]):  # each chunk still standard normal, and not a copy of the first
        assert abs(float(later.mean())) < 0.03 and abs(float(later.std()) - 1) < 0.03
        assert not torch.allclose(later, first[:, : later.shape[1]])
    # a fixed linear map of the first chunk: least squares recovers it exactly, and it is orthogonal
    rot = torch.linalg.lstsq(first.flatten(1), full[0]).solution
    assert torch.allclose(first.flatten(1) @ rot, full[0], atol=1e-4)
    assert torch.allclose(rot @ rot.T, torch.eye(rot.shape[0]), atol=1e-4) and not torch.allclose(rot, torch.eye(24), atol=0.1)
    assert torch.equal(coupled_noise(first, 8, 3, seed=5), n) and not torch.equal(coupled_noise(first, 8, 3, seed=6), n)


def test_bench_lists_are_checked_in_one_line(run_cli):
    for args in (("stream", "--chunks", "2,x"), ("grpo", "--frames", "0,8")):
        code, _, err = run_cli("bench", *args)
        assert code == 2 and "positive integers separated by commas" in err and len(err.strip().splitlines()) == 1


def test_rollout_weight_clamping_is_logged(run_cli, tmp_path, assets):
    teacher, reward = assets
    run = tmp_path / "clamp"
    _distill(run_cli, run, teacher, "method=stream_r1", "train.steps=2", f"stream_r1.reward_weights={reward}",
             "stream_r1.beta=-20", "stream_r1.max_weight=1.0", "eval_num=0")
    rows = [r for r in (json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    # the untrained tiny reward gives r < 0 (about -0.3), so exp(-20 r) > 1 = max_weight for every rollout
    assert all(r["rollout_weight_max"] == 1.0 and r["rollout_weights_clamped"] == 1.0 for r in rows)
    _distill(run_cli, tmp_path / "free", teacher, "method=stream_r1", "train.steps=1", f"stream_r1.reward_weights={reward}",
             "eval_num=0")
    free = [json.loads(l) for l in (tmp_path / "free" / "metrics.jsonl").read_text().splitlines()][0]
    assert free["rollout_weights_clamped"] == 0.0


def test_validation_leaves_training_unchanged_and_exports_the_ema_of_its_best_step(run_cli, tmp_path, assets):
    from genrl.evaluation import validation_accuracy
    from genrl.models.registry import load_model

    teacher, _ = assets
    _distill(run_cli, tmp_path / "plain", teacher, "method=dmd", "train.steps=3")
    out = _distill(run_cli, tmp_path / "val", teacher, "method=dmd", "train.steps=3", "train.val_every=2",
                   "train.val_num=3", "train.keep_checkpoints=5")
    for name in ("student", "critic", "ema"):  # validating draws no random number training would have drawn
        a = load_file(str(tmp_path / "plain" / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "val" / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = [json.loads(l) for l in (tmp_path / "val" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_prompt_accuracy"] for r in rows if "val_prompt_accuracy" in r}
    assert sorted(val) == [2, 3]  # every 2 steps and at the last
    best = json.loads((tmp_path / "val" / "best" / "best.json").read_text())
    assert best["step"] == (3 if val[3] > val[2] else 2) and best["value"] == max(val.values())
    assert f"best on val: step {best['step']} (val_prompt_accuracy={best['value']:.4f})" in out
    report = (tmp_path / "val" / "report.md").read_text()
    assert f"step {best['step']}: val_prompt_accuracy = {best['value']:.4f}" in report
    assert (tmp_path / "val" / "plots" / "validation_prompt_accuracy.png").exists()
    ema = load_file(str(tmp_path / "val" / "checkpoints" / f"step_{best['step']:07d}" / "ema.safetensors"))
    exported = load_file(str(tmp_path / "val" / "best" / "model.safetensors"))
    assert all(torch.equal(ema[k], exported[k]) for k in ema)
    # the logged figure is what `validation_accuracy` measures on the exported file, seed by seed
    again = validation_accuracy(load_model(str(tmp_path / "val" / "best" / "model.safetensors"), kind="video_model"), 3,
                                frames=6)
    assert again == best["metrics"]


def test_dmd_regression_loss_adds_to_the_generator_loss_and_reuses_a_pairs_file(run_cli, tmp_path, assets):
    teacher, _ = assets
    _distill(run_cli, tmp_path / "a", teacher, "method=dmd", "train.steps=2", "dmd.regression_weight=0.5",
             "train.grad_clip=0", "eval_num=0")
    rows = [r for r in (json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["regression_loss"] > 0 and abs(r["loss"] - (r["dmd_loss"] + 0.5 * r["regression_loss"])) < 1e-5
    pairs = tmp_path / "a" / "ode_pairs.pt"
    assert torch.load(pairs)["states"].shape[0] == 4  # ode.num_pairs made at the start
    # the same pairs read from a file: the same run, and no pairs made in the new folder
    _distill(run_cli, tmp_path / "b", teacher, "method=dmd", "train.steps=2", "dmd.regression_weight=0.5",
             "train.grad_clip=0", "eval_num=0", f"dmd.regression_pairs={pairs}")
    again = [r for r in (json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows] and not (tmp_path / "b" / "ode_pairs.pt").exists()
    # the regression changes what the generator learns: weight 0 gives a different student after two steps
    _distill(run_cli, tmp_path / "c", teacher, "method=dmd", "train.steps=2", "train.grad_clip=0", "eval_num=0")
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000002" / "student.safetensors"))
    c = load_file(str(tmp_path / "c" / "checkpoints" / "step_0000002" / "student.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_dmd_regression_pairs_that_do_not_fit_are_one_usage_line(run_cli, tmp_path, assets):
    teacher, _ = assets
    code, _, err = run_cli("distill", f"out_dir={tmp_path / 'm'}", f"teacher={teacher}", *TINY, "method=dmd",
                           "dmd.regression_weight=1", f"dmd.regression_pairs={tmp_path / 'none.pt'}")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    torch.save({"prompts": ["x"], "states": torch.zeros(1, 2, 3, 4, 4, 4), "finals": torch.zeros(1, 3, 4, 4, 4)}, bad)
    code, _, err = run_cli("distill", f"out_dir={tmp_path / 'n'}", f"teacher={teacher}", *TINY, "method=dmd",
                           "dmd.regression_weight=1", f"dmd.regression_pairs={bad}")
    assert code == 2 and "this student needs" in err and len(err.strip().splitlines()) == 1


def test_dmd_regression_after_an_ode_init_stage_reuses_its_pairs(run_cli, tmp_path, assets):
    teacher, _ = assets
    run = tmp_path / "r"
    _distill(run_cli, run, teacher, "method=dmd", "ode_init_first=true", "ode.stage_steps=1", "train.steps=1",
             "dmd.regression_weight=0.5", "eval_num=0")
    row = [r for r in (json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r][0]
    assert row["regression_loss"] > 0
    assert (run / "ode_init" / "ode_pairs.pt").exists() and not (run / "ode_pairs.pt").exists()


def test_sweep_diagnostics_by_hand(tmp_path):
    from genrl.cli.sweep import diagnostics
    from genrl.train.trainer import read_metrics

    ess = [8.0, 4.0, 6.0, 2.0, 5.0, 7.0, 3.0, 8.0]
    rows = [{"step": 5 * (i + 1), "loss": 1.0, "rollout_ess": e} for i, e in enumerate(ess)]
    rows[1] |= {"saliency_on_object": 0.2, "object_area": 0.05}
    rows[5] |= {"saliency_on_object": 0.4, "object_area": 0.07}
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    d = diagnostics(read_metrics(tmp_path), {"reward_probe_auc": {"r": 0.625, "held": 0.7}}, "r")
    assert d["ess"] == 43 / 8 and d["ess_min"] == 2.0
    assert d["ess_first_quarter"] == 6.0 and d["ess_last_quarter"] == 5.5  # 8 rows: quarters of 2
    assert abs(d["saliency_on_object"] - 0.3) < 1e-12 and abs(d["object_area"] - 0.06) < 1e-12
    assert d["reward_probe_auc"] == 0.625
    d = diagnostics(read_metrics(tmp_path), {"reward_probe_auc": {"r": None}}, "r")  # undefined AUC: left out
    assert "reward_probe_auc" not in d and d["ess"] == 43 / 8


def test_gan_losses_hand_computed_and_the_generator_term_reaches_only_the_student():
    from distill.gan import FeatureClassifier, block_features, classifier_loss, generator_gan_loss

    z = torch.zeros(3)
    assert abs(float(classifier_loss(z, z)) - 2 * math.log(2)) < 1e-6
    assert abs(float(generator_gan_loss(z)) - math.log(2)) < 1e-6
    # real logit 2 and fake logit -1: softplus(-2) + softplus(-1)
    want = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))
    assert abs(float(classifier_loss(torch.tensor([2.0]), torch.tensor([-1.0]))) - want) < 1e-6
    critic = tiny_video_model(seed=1)
    head = FeatureClassifier(critic.dit.cfg.dim, critic.encode_text(["x"])[0].shape[-1])
    x = torch.randn(critic.latent_shape(2, 6), requires_grad=True)
    text = critic.encode_text(["a red square", "a big blue circle moving left"])
    text = (text[0].detach(), text[1])
    for p in [*critic.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    with block_features(critic.dit, 0) as feats:
        critic.velocity(x, torch.tensor([0.3, 0.9]), text)
        generator_gan_loss(head(feats[-1], text)).backward()
    tokens = 6 * (x.shape[-2] // critic.dit.cfg.patch) * (x.shape[-1] // critic.dit.cfg.patch)
    assert len(feats) == 1 and feats[0].shape == (2, tokens, critic.dit.cfg.dim)
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in [*critic.parameters(), *head.parameters()])
    # padding tokens are not read: changing them leaves the logit unchanged
    other = (text[0].clone(), text[1])
    other[0][0, 4:] = 7.0
    assert torch.allclose(head(feats[0], text), head(feats[0], other))
    assert not critic.dit.blocks[0]._forward_hooks  # the hook is gone after the block


def test_dmd_gan_term_adds_to_the_generator_loss_and_leaves_the_dmd_draws_alone(run_cli, tmp_path, assets):
    teacher, _ = assets
    gan = ["dmd.gan_weight=0.5", "dmd.gan_classifier_weight=0.1", "train.grad_clip=0", "eval_num=0"]
    _distill(run_cli, tmp_path / "g", teacher, "method=dmd", "train.steps=2", *gan)
    rows = [r for r in (json.loads(l) for l in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["gan_generator_loss"] > 0 and r["gan_classifier_loss"] > 0
        assert abs(r["loss"] - (r["dmd_loss"] + 0.5 * r["gan_generator_loss"])) < 1e-5
        assert abs(r["critic_loss"] - (r["critic_flow_loss"] + 0.1 * r["gan_classifier_loss"])) < 1e-5
    _distill(run_cli, tmp_path / "p", teacher, "method=dmd", "train.steps=2", "train.grad_clip=0", "eval_num=0")
    plain = [r for r in (json.loads(l) for l in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    ck = lambda run, step, name: load_file(str(tmp_path / run / "checkpoints" / f"step_000000{step}" / f"{name}.safetensors"))
    assert any(not torch.equal(ck("g", 1, "student")[k], ck("p", 1, "student")[k]) for k in ck("p", 1, "student"))
    assert any(not torch.equal(ck("g", 1, "gan_classifier")[k], ck("g", 2, "gan_classifier")[k])
               for k in ck("g", 1, "gan_classifier"))
    # with the classifier out of the critic's loss, the critic's updates and the DMD step's draws are plain DMD's
    _distill(run_cli, tmp_path / "c", teacher, "method=dmd", "train.steps=1", "dmd.gan_weight=0.5",
             "dmd.gan_classifier_weight=0", "train.grad_clip=0", "eval_num=0")
    only = [r for r in (json.loads(l) for l in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert abs(only[0]["dmd_loss"] - plain[0]["loss"]) < 1e-7 and only[0]["gan_generator_loss"] > 0
    assert all(torch.equal(ck("c", 1, "critic")[k], ck("p", 1, "critic")[k]) for k in ck("p", 1, "critic"))
    assert any(not torch.equal(ck("c", 1, "student")[k], ck("p", 1, "student")[k]) for k in ck("p", 1, "student"))
    # and it resumes exactly, classifier head and the critic's optimiser included
    _distill(run_cli, tmp_path / "h", teacher, "method=dmd", "train.steps=1", *gan)
    _distill(run_cli, tmp_path / "h", teacher, "method=dmd", "train.steps=2", *gan)
    for name in ("student", "critic", "gan_classifier"):
        a, b = ck("g", 2, name), ck("h", 2, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_gan_head_learns_at_its_own_rate_under_the_critics_schedule():
    from distill.dmd import DMDConfig, DMDMethod
    from genrl.methods.common import OptimConfig, lr_factor
    from genrl.worlds.shapes import ShapesWorld, WorldConfig

    teacher, student = tiny_video_model(seed=0), tiny_video_model(seed=1)
    critic_optim = OptimConfig(lr=1e-4, warmup_steps=4)
    m = DMDMethod(DMDConfig(gan_weight=0.1, gan_head_lr_scale=10.0), student, teacher, ShapesWorld(WorldConfig()),
                  OptimConfig(lr=2e-5), critic_optim, seed=0)
    dit_group, head_group = m.critic_opt.param_groups
    assert len(dit_group["params"]) == len(list(m.critic.dit.parameters()))
    assert len(head_group["params"]) == len(list(m.gan_head.parameters()))
    first = lr_factor(0, critic_optim)  # the schedule's warm-up scales both groups alike
    assert dit_group["lr"] == pytest.approx(1e-4 * first) and head_group["lr"] == pytest.approx(1e-3 * first)
    m.critic_sched.step()
    assert head_group["lr"] / dit_group["lr"] == pytest.approx(10.0)
    assert len(DMDMethod(DMDConfig(), student, teacher, ShapesWorld(WorldConfig()), OptimConfig(lr=2e-5), critic_optim,
                         seed=0).critic_opt.param_groups) == 1


def test_dmd_gan_weight_zero_is_plain_dmd_and_bad_blocks_are_one_usage_line(run_cli, tmp_path, assets):
    teacher, _ = assets
    _distill(run_cli, tmp_path / "z", teacher, "method=dmd", "train.steps=1", "dmd.gan_weight=0", "dmd.gan_block=0")
    _distill(run_cli, tmp_path / "p", teacher, "method=dmd", "train.steps=1")
    for name in ("student", "critic"):
        a = load_file(str(tmp_path / "z" / "checkpoints" / "step_0000001" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "p" / "checkpoints" / "step_0000001" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    code, _, err = run_cli("distill", f"out_dir={tmp_path / 'b'}", f"teacher={teacher}", *TINY, "method=dmd",
                           "dmd.gan_weight=0.1", "dmd.gan_block=99")
    assert code == 2 and "dmd.gan_block=99" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("distill", f"out_dir={tmp_path / 's'}", f"teacher={teacher}", *TINY, "method=dmd",
                           "dmd.gan_weight=0.1", "parallel.sequence=2")
    assert code == 2 and "parallel.sequence" in err and len(err.strip().splitlines()) == 1
