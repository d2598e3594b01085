"""`genrl eval --task causal`: how much of a teacher's chunk the noise a streaming student sees fixes."""

import json

import pytest
import torch

from genrl.causality import causal_report, variance_shares
from genrl.models.registry import load_model


def test_variance_shares_are_the_anova_estimators_by_hand():
    # one prompt, 2 groups of 2 draws, one element: groups (1, 3) and (5, 9)
    y = torch.tensor([[[1.0, 3.0], [5.0, 9.0]]])
    within, between = variance_shares(y)
    assert within == pytest.approx((2.0 + 8.0) / 2)  # unbiased variances 2 and 8
    assert between == pytest.approx(12.5 - 5.0 / 2)  # group means 2 and 7: unbiased variance 12.5, less within / 2
    with pytest.raises(ValueError, match="at least 2 groups"):
        variance_shares(torch.zeros(1, 1, 3))


@pytest.mark.parametrize("where, share", [("own", 0.0), ("last", 1.0)])
def test_a_teacher_whose_chunk_is_its_own_noise_or_the_last_chunks_reads_0_or_1(monkeypatch, where, share):
    teacher = load_model("shapes-teacher")
    chunk = teacher.cfg.dit.chunk_frames

    def fake_sample(self, prompts, frames, steps=50, guidance=5.0, generator=None, noise=None):
        if where == "own":  # each chunk is its own noise: fixed by the noise of chunks <= c
            return noise.clone()
        return torch.cat([noise[:, -chunk:]] * (noise.shape[1] // chunk), dim=1)  # every chunk is the last one's noise

    monkeypatch.setattr(type(teacher), "sample", fake_sample)
    report = causal_report(teacher, "val", num=6, steps=2, bases=2, draws=4, quiet=True)
    rows = report["chunks"]
    assert [r["chunk"] for r in rows] == [0, 1]  # 9 frames, 3-frame chunks: the last chunk is all its own noise
    for r in rows:
        assert r["share_unfixed"] == pytest.approx(share, abs=0.05), r
    if where == "own":
        assert rows[0]["within"] == 0.0
    else:  # unit-variance noise: within about 1, between about 0
        assert rows[0]["within"] == pytest.approx(1.0, abs=0.05)
    assert 0.0 <= rows[0]["probe_single"] <= 1.0 and 0.0 <= rows[0]["probe_mean_of_draws"] <= 1.0


def test_causal_on_the_command_line(run_cli, tmp_path):
    code, out, err = run_cli("eval", "--task", "causal", "--model", "shapes-teacher", "--split", "val", "--num", "2",
                             "--steps", "2", "--out", str(tmp_path / "c.json"), "--quiet")
    assert code == 0 and "chunk 0:" in out and "chunk 1:" in out, err
    rec = json.loads((tmp_path / "c.json").read_text())
    assert rec["steps"] == 2 and rec["guidance"] == 4.0 and len(rec["chunks"]) == 2
    for args, why in ((["--model", "shapes-student-dmd"], "streaming student"),
                      (["--model", "shapes-teacher", "--frames", "3"], "need at least 2"),
                      (["--model", "shapes-teacher", "--timesteps", "1000"], "not an option of --task causal")):
        code, _, err = run_cli("eval", "--task", "causal", *args, "--num", "2")
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
