import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from genrl.io.video import write_video
from genrl.models.registry import save_weights
from genrl.worlds.shapes import ShapesWorld
from rewards.shapes import ShapesReward, ShapesRewardConfig


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ShapesRewardConfig(width=8, dim=16)
    return str(save_weights(ShapesReward(cfg), tmp_path_factory.mktemp("r") / "reward.safetensors", "shapes_reward", cfg))


@pytest.fixture
def videos(tmp_path):
    v, caps, _ = ShapesWorld().clips("val", range(2))
    write_video(tmp_path / "a.gif", v[0])
    # an mp4 the project did not make: written by imageio from numpy, at another size
    arr = (np.random.default_rng(0).random((8, 48, 64, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "b.mp4", arr, plugin="FFMPEG", fps=8)
    return tmp_path, caps


def test_score_json_lists_every_file(run_cli, tiny_reward, videos):
    folder, caps = videos
    code, out, err = run_cli("score", str(folder / "a.gif"), str(folder / "b.mp4"), "--prompt", caps[0],
                             "--weights", tiny_reward, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [str(folder / "a.gif"), str(folder / "b.mp4")]
    for r in rows:
        assert set(r) >= {"path", "prompt", "vq", "mq", "ta", "overall"}
        assert abs(r["overall"] - (r["vq"] + r["mq"] + r["ta"]) / 3) < 1e-3


def test_unreadable_file_is_reported_and_the_rest_scored(run_cli, tiny_reward, videos, tmp_path):
    folder, caps = videos
    (folder / "broken.mp4").write_text("not a video")
    code, out, err = run_cli("score", str(folder), "--prompt", caps[0], "--weights", tiny_reward, "--format", "csv")
    assert code == 1 and "1 of 3 file(s) could not be read" in err
    lines = out.strip().splitlines()
    assert lines[0].startswith("path,prompt,vq,mq,ta,overall,error") and len(lines) == 4
    assert any("broken.mp4" in l and "cannot decode" in l for l in lines)


def test_prompts_file_and_saliency_output(run_cli, tiny_reward, videos, tmp_path):
    folder, caps = videos
    tsv = tmp_path / "p.tsv"
    tsv.write_text(f"{folder / 'a.gif'}\t{caps[0]}\nb.mp4\t{caps[1]}\n")
    code, out, err = run_cli("score", str(folder / "a.gif"), str(folder / "b.mp4"), "--prompts", str(tsv),
                             "--weights", tiny_reward, "--saliency", str(tmp_path / "sal"))
    assert code == 0, err
    assert (tmp_path / "sal" / "a_saliency.gif").exists() and (tmp_path / "sal" / "b_saliency.gif").exists()
    code, _, err = run_cli("score", str(folder / "a.gif"), "--weights", tiny_reward)
    assert code == 2 and "give exactly one of --prompt TEXT or --prompts FILE" in err


def test_axes_that_cannot_be_scored_are_n_a_with_a_warning_and_left_out_of_overall(run_cli, tiny_reward, tmp_path):
    v, caps, _ = ShapesWorld().clips("val", range(1))
    write_video(tmp_path / "long.gif", v[0])
    write_video(tmp_path / "one.gif", v[0, :1])
    code, out, err = run_cli("score", str(tmp_path / "long.gif"), "--prompt", caps[0], "--weights", tiny_reward,
                             "--format", "json")
    assert code == 0
    (full,) = json.loads(out)
    (tmp_path / "p.tsv").write_text(f"{tmp_path / 'long.gif'}\ta purple fish\n{tmp_path / 'one.gif'}\t{caps[0]}\n")
    code, out, err = run_cli("score", str(tmp_path / "long.gif"), str(tmp_path / "one.gif"), "--prompts",
                             str(tmp_path / "p.tsv"), "--weights", tiny_reward, "--format", "json")
    assert code == 0
    unknown, short = json.loads(out)
    assert unknown["ta"] is None and unknown["vq"] == full["vq"] and unknown["mq"] == full["mq"]
    assert unknown["overall"] == pytest.approx((full["vq"] + full["mq"]) / 2, abs=1e-4)
    assert short["mq"] is None and short["frames"] == 1 and short["ta"] is not None
    assert short["overall"] == pytest.approx((short["vq"] + short["ta"]) / 2, abs=1e-4)
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and "text alignment is reported as n/a" in err and "motion quality is reported as n/a" in err
    code, out, _ = run_cli("score", str(tmp_path / "one.gif"), "--prompt", caps[0], "--weights", tiny_reward)
    assert "n/a" in out.splitlines()[1]
