"""SEED-Bench-R1 study: SFT and GRPO arms from one start, three splits, paired differences."""

import json

import pytest
import torch

from genrl.methods.qa import build_vlm
from genrl.models.registry import save_weights
from genrl.worlds.qa import QAConfig, ShapesQA


def test_the_held_out_background_is_a_value_no_clip_had():
    base, grey = ShapesQA(QAConfig()), ShapesQA(QAConfig(background=0.5))
    a, items_a = base.items("test", range(6))
    b, items_b = grey.items("test", range(6))
    assert [i.prompt() for i in items_a] == [i.prompt() for i in items_b]  # same questions, same shapes
    for clip_a, clip_b in zip(a, b):  # the background is what most pixels show
        assert round(float(clip_a[0].flatten().mode().values), 2) in (0.10, 0.85)
        assert float(clip_b[0].flatten().mode().values) == pytest.approx(0.5)
        same = (clip_a - clip_b).abs().amax(dim=1) < 1e-6  # (F, H, W): where a shape fully covers the pixel
        assert 0 < float(same.float().mean()) < 0.5


def test_the_study_trains_both_arms_from_one_start_and_pairs_them_on_three_splits(run_cli, tmp_path):
    torch.manual_seed(0)
    start = build_vlm("debug", ShapesQA())
    path = save_weights(start, tmp_path / "start.safetensors", "vlm", start.cfg)
    out = tmp_path / "study"
    code, stdout, err = run_cli("rl-vs-sft", "--start", str(path), "--steps", "2", "--num", "6", "--out-dir", str(out), "--quiet")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["in-distribution", "held-out combinations", "held-out background"]
    for label, r in results.items():
        name = label.replace(" ", "_")
        evals = {k: json.loads((out / f"eval_{k}_{name}.json").read_text()) for k in ("start", "sft", "grpo")}
        assert {k: r[k] for k in evals} == {k: e["accuracy"] for k, e in evals.items()}
        assert evals["sft"]["per_item"]["type"] == evals["grpo"]["per_item"]["type"]  # the same questions
        m = r["grpo_minus_sft"]
        assert m[0] == pytest.approx(r["grpo"] - r["sft"]) and m[1] <= m[0] <= m[2]
    assert json.loads((out / "eval_sft_held-out_background.json").read_text())["background"] == 0.5
    for arm in ("sft", "grpo"):  # both trained 2 steps from the same weights
        rows = [json.loads(l) for l in (out / arm / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
        assert [r["step"] for r in rows][-1] == 2
    assert "| held-out background |" in (out / "table.md").read_text()


def test_an_unwritable_study_folder_is_refused_in_one_line_before_either_arm(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli("rl-vs-sft", "--steps", "1", "--num", "2", "--out-dir", str(blocker / "study"), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out-dir" in err and "is a file" in err
    assert not (tmp_path / "study").exists()
