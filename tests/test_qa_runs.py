"""`genrl sft` and `genrl grpo` end to end on debug-size models: run folders, the held-out curve,
exact resume, `genrl eval --task qa`, and clear errors."""

import json

import torch
from safetensors.torch import load_file

SFT = ["sft.size=debug", "sft.batch_size=8", "sft.eval_num=8", "eval_num=8", "train.log_every=10", "train.sample_every=40",
       "optim.lr=5e-3", "optim.warmup_steps=5"]  # 80 steps: enough to answer in format, so GRPO has rewards to learn from
GRPO = ["grpo.prompts_per_step=2", "grpo.group_size=3", "grpo.eval_num=8", "eval_num=8", "train.log_every=1",
        "train.sample_every=2", "grpo.max_new_tokens=12"]


def test_sft_then_grpo_runs_resume_exactly_and_eval(tmp_path, run_cli):
    sft = tmp_path / "sft"
    code, out, err = run_cli("sft", "--config", "configs/sft_video_qa.yaml", f"out_dir={sft}", "train.steps=80", "-q", *SFT)
    assert code == 0, err
    assert (sft / "model.safetensors").exists() and json.loads((sft / "eval.json").read_text())["num"] == 8
    rows = [json.loads(x) for x in (sft / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in rows) and rows[0]["loss"] > 0

    straight, split = tmp_path / "g1", tmp_path / "g2"
    base = ["grpo", "--config", "configs/grpo_video_qa.yaml", f"grpo.policy={sft}", "-q", *GRPO]
    assert run_cli(*base, f"out_dir={straight}", "train.steps=3")[0] == 0
    assert run_cli(*base, f"out_dir={split}", "train.steps=2")[0] == 0
    code, out, err = run_cli(*base, f"out_dir={split}", "train.steps=3")
    assert code == 0, err
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(sft / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "heldout_accuracy" in rows[0]  # the curve starts at the SFT model
    assert any("reward_accuracy" in r for r in rows) and (straight / "report.md").exists()

    code, out, _ = run_cli("eval", "--task", "qa", "--checkpoint", str(straight), "--num", "8", "--out", str(tmp_path / "qa.json"), "-q")
    assert code == 0
    report = json.loads((tmp_path / "qa.json").read_text())
    assert report["num"] == 8 and 0 <= report["accuracy"] <= 1 and set(report["per_type"]) <= {
        "colour", "shape", "size", "direction", "speed", "count", "order"}
    assert report == {**report, "accuracy": json.loads((straight / "eval.json").read_text())["accuracy"]}

    code, out, err = run_cli("bench", "grpo", "--config", "configs/grpo_video_qa.yaml", f"grpo.policy={sft}", *GRPO[:2],
                             "--frames", "2,4", "--steps", "1", "--prompts-per-step", "0", "--json", str(tmp_path / "b.json"), "-q")
    assert code == 0, err
    bench = json.loads((tmp_path / "b.json").read_text())
    # 2 questions x 3 rollouts: the cache encodes 2 clips per step; without it the rollout, the reference
    # and the update pass each encode all 6 rows
    assert bench["raw"]["vision_clips_per_step"] == {f: {"cached": 2, "recomputed": 18} for f in ("2", "4")}
    for f in ("2", "4"):
        s = bench["raw"]["step_seconds"][f]
        assert abs(bench[f"grpo.cached_speedup.{f}"] - s["recomputed"] / s["cached"]) < 1e-12


def test_bad_grpo_settings_are_one_line_errors(tmp_path, run_cli):
    code, _, err = run_cli("grpo", "--config", "configs/grpo_video_qa.yaml", f"out_dir={tmp_path}", "grpo.variant=ppo")
    assert code == 2 and "valid: grpo, t_grpo, tw_grpo, reg_grpo" in err and "Traceback" not in err
    code, _, err = run_cli("grpo", "--config", "configs/grpo_video_qa.yaml", f"out_dir={tmp_path}", "grpo.policy=shapes-teacher")
    assert code == 2 and "expected a 'vlm'" in err
    code, _, err = run_cli("eval", "--task", "qa", "--model", "shapes-teacher")
    assert code == 2 and "expected a 'vlm'" in err
