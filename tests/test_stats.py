import math

import torch

from genrl.stats import auc, effective_sample_size, paired_bootstrap


def test_paired_bootstrap_hand_values():
    assert paired_bootstrap(torch.full((3, 50), 0.25)) == (0.25, 0.25, 0.25)  # no spread, no interval
    mean, lo, hi = paired_bootstrap(torch.tensor([[0.0, 1.0]]), reps=4000)
    assert mean == 0.5 and lo == 0.0 and hi == 1.0  # replicate means are 0, 0.5 or 1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 400, generator=g, dtype=torch.float64)
    m, lo, hi = paired_bootstrap(noise + 0.3)
    assert lo < m < hi and lo > 0.15 and hi < 0.45  # a real shift of 0.3 with unit noise over 2,000 pairs
    m, lo, hi = paired_bootstrap(noise)
    assert lo < 0 < hi  # no shift: the interval holds 0
    # seeds that disagree widen the interval beyond what the prompts alone give
    shifted = noise.clone()
    shifted[0] += 3.0
    assert paired_bootstrap(shifted)[2] - paired_bootstrap(shifted)[1] > hi - lo


def test_auc_and_effective_sample_size():
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.1, 0.9, 0.4], [True, False, False]) == 0.0
    assert auc([1.0], [True]) is None
    assert effective_sample_size(torch.ones(8)) == 8.0
    assert math.isclose(effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0])), 1.0)
    assert math.isclose(effective_sample_size(torch.tensor([2.0, 1.0])), 9 / 5)


def test_auc_difference_pairs_the_items_and_brackets_its_point_estimate():
    from genrl.stats import auc_difference

    labels = [True, True, True, False, False, False]
    perfect = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    mixed = [0.9, 0.1, 0.7, 0.3, 0.8, 0.2]  # positives above negatives in 5 of 9 pairs
    assert auc(mixed, labels) == 5 / 9
    d, lo, hi = auc_difference(mixed, perfect, labels, reps=300)
    assert d == 1 - 5 / 9 and lo <= d <= hi and hi <= 1 - 0 and lo > -1
    assert auc_difference(perfect, perfect, labels, reps=50) == (0.0, 0.0, 0.0)  # the same scores: no difference
    assert auc_difference(perfect, mixed, [True] * 6, reps=10) is None


def test_eval_prints_each_rewards_probe_auc_and_the_paired_difference(run_cli, tmp_path):
    out = tmp_path / "e.json"
    code, stdout, err = run_cli("eval", "--model", "shapes-student-dmd", "--num", "12", "--reward", "shapes",
                                "--reward", "shapes-reward-b", "--out", str(out), "--quiet")
    assert code == 0, err
    import json

    r = json.loads(out.read_text())
    hits = [bool(h) for h in r["per_video"]["hit"]]
    a, b = (r["per_video"]["rewards"][n]["overall"] for n in ("shapes", "shapes-reward-b"))
    assert 0 < sum(hits) < len(hits)  # both classes among these 12 videos (seed 0)
    d = r["reward_probe_auc_vs_first"]["shapes-reward-b"]
    assert d[0] == auc(b, hits) - auc(a, hits) and d[1] <= d[0] <= d[2]
    assert "reward probe AUC: shapes" in stdout and "shapes-reward-b - shapes" in stdout
    # the probe's motion read-out: jerk = the mean of the per-video figures it could read; seams for a streaming model
    jerks = [j for j in r["per_video"]["jerk"] if j is not None]
    m = r["motion"]
    assert m["videos_read"] == len(jerks) > 0 and abs(m["jerk"] - sum(jerks) / len(jerks)) < 1e-4
    assert m["step_across_chunks"] > 0 and m["step_inside_chunks"] > 0 and "step across chunk seams" in stdout
    # what each prompt named (full captions: all six attributes), for `genrl compare --by`
    from genrl.worlds.shapes import ATTRIBUTES, ShapesWorld, WorldConfig, attribute_names

    named = r["per_video"]["named"]
    assert len(named) == 12 and all(set(n) == set(ATTRIBUTES) for n in named)
    _, _, attrs = ShapesWorld(WorldConfig()).clips("test", list(range(12)))  # seed 0: the split's first 12 clips
    assert named == [attribute_names(row) for row in attrs.tolist()]
