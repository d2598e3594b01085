"""The Wan2.1 recipes end to end on a tiny random pipeline folder: ODE init, Stream-R1, resume, export."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("diffusers")

from genrl.models.registry import save_weights
from rewards.shapes import ShapesReward, ShapesRewardConfig

from tiny_wan import tiny_wan_folder

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["height=32", "width=32", "world.frames=9", "streaming.local_frames=3", "streaming.sink_frames=0",
         "dmd.batch_size=1", "dmd.critic_ratio=1", "dmd.num_samples=1", "train.checkpoint_every=1",
         "ode.num_pairs=2", "ode.teacher_steps=2", "ode.num_samples=1", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan_recipe")
    tiny_wan_folder(d / "wan")
    (d / "prompts.txt").write_text("a red square moving left\n# a comment\n\na cat walking\n")
    torch.manual_seed(0)
    rc = ShapesRewardConfig(width=8, dim=16)
    reward = save_weights(ShapesReward(rc), d / "reward.safetensors", "shapes_reward", rc)
    return d, str(reward)


def test_wan_ode_init_then_stream_r1_resumes_and_exports_diffusers_transformer(run_cli, setup, monkeypatch):
    from diffusers import WanTransformer3DModel

    d, reward = setup
    monkeypatch.setenv("WAN_DIR", str(d / "wan"))
    monkeypatch.setenv("GENRL_PROMPTS", str(d / "prompts.txt"))
    monkeypatch.setenv("VIDEOREWARD_DIR", "unused")
    code, _, err = run_cli("distill", "--config", str(ROOT / "configs/ode_init_wan.yaml"), f"out_dir={d / 'ode'}",
                           "train.steps=2", *SMALL)
    assert code == 0, err
    sr1 = ["--config", str(ROOT / "configs/stream_r1_wan.yaml"), f"student={d / 'ode'}",
           "stream_r1.reward=shapes", f"stream_r1.reward_weights={reward}", *SMALL]
    code, _, err = run_cli("distill", *sr1, f"out_dir={d / 'a'}", "train.steps=2")
    assert code == 0, err
    for steps in (1, 2):  # one step, then resume for the second
        code, _, err = run_cli("distill", *sr1, f"out_dir={d / 'b'}", f"train.steps={steps}")
        assert code == 0, err
    for name in ("student", "critic", "ema"):
        a = load_file(str(d / "a" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        b = load_file(str(d / "b" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
        assert all(k.startswith("dit.transformer.") for k in a)  # the frozen UMT5 and VAE are not checkpointed
    rows = [json.loads(line) for line in (d / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_vq", "rollout_weight_max", "temporal_w0"} <= set(rows[0])
    model, info = WanTransformer3DModel.from_pretrained(str(d / "a" / "transformer"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ema = load_file(str(d / "a" / "checkpoints" / "step_0000002" / "ema.safetensors"))
    assert all(torch.equal(v, ema[f"dit.transformer.{k}"]) for k, v in model.state_dict().items())
    # the run folder samples as a streaming student
    code, out, err = run_cli("sample", "--checkpoint", str(d / "a"), "--prompt", "a red square", "--frames", "9",
                             "--height", "32", "--width", "32", "--out", str(d / "s.mp4"))
    assert code == 0, err
    assert "5 NFE/frame" in out and (d / "s.mp4").stat().st_size > 0


def test_sample_writes_a_video_from_a_pipeline_folder(run_cli, setup):
    d, _ = setup
    code, out, err = run_cli("sample", "--checkpoint", str(d / "wan"), "--prompt", "a red square moving left",
                             "--frames", "9", "--steps", "2", "--height", "64", "--width", "64", "--out", str(d / "x.mp4"))
    assert code == 0, err
    import imageio.v3 as iio

    frames = iio.imread(d / "x.mp4")
    assert frames.shape[0] == 9 and "4 NFE/frame" in out
    assert frames.shape[1:3] == (128, 128)  # 64x64 enlarged to 128 on the short side (480x832 stays as it is)
    assert iio.immeta(d / "x.mp4")["fps"] == 16  # Wan2.1's rate, which VideoReward's 2-frames-a-second rule reads
    from genrl.cli.sample import load_generator, sampling_config

    # with no --guidance, each teacher samples at its own default: WanPipeline's 5, the shapes teacher's 4
    assert sampling_config(load_generator(None, str(d / "wan"), height=32, width=32), None, None).guidance == 5.0
    assert sampling_config(load_generator("shapes-teacher", None), None, None).guidance == 4.0
    # the attribute probe cannot judge a Wan model's videos: eval says so and names the way that can
    code, _, err = run_cli("eval", "--checkpoint", str(d / "wan"), "--num", "2", "--steps", "1")
    assert code == 2 and "cannot judge it" in err and "genrl score DIR --prompts DIR/prompts.tsv" in err, err


@pytest.mark.parametrize("damage,message", [
    ("not_wan", "not a diffusers Wan folder"),
    ("missing_key", "missing key"),
    ("shape", "weight blocks.0.attn1.to_q.weight expected shape"),
])
def test_bad_wan_folders_are_one_line_errors(run_cli, setup, tmp_path, damage, message):
    import shutil

    from safetensors.torch import save_file

    d, _ = setup
    bad = tmp_path / "bad"
    shutil.copytree(d / "wan", bad)
    weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    if damage == "not_wan":
        shutil.rmtree(bad / "transformer")
        (bad / "model_index.json").unlink()
        (bad / "transformer").mkdir()
        (bad / "genrl_wan.json").write_text(json.dumps({"pipeline": str(d / "wan"), "transformer": str(bad / "nothing")}))
    else:
        state = load_file(str(weights))
        key = "blocks.0.attn1.to_q.weight"
        if damage == "missing_key":
            del state[key]
        else:
            state[key] = torch.zeros(3, 3)
        save_file(state, str(weights))
    code, _, err = run_cli("sample", "--checkpoint", str(bad), "--prompt", "a cat", "--frames", "9", "--steps", "1",
                           "--height", "32", "--width", "32", "--out", str(tmp_path / "x.mp4"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_wan_stream_r1_with_parallel_sequence_2_under_accelerate_equals_one_process(setup, monkeypatch, tmp_path):
    """The Wan2.1 teacher's and critic's 3 latent frames split over 2 ranks (uneven); one step, a resume to the
    second, against a plain 2-step run: the same weights and the same losses and gradient norms."""
    from test_sequence_parallel import _one_then_split
    from tiny import accelerate_launch

    d, reward = setup
    monkeypatch.setenv("WAN_DIR", str(d / "wan"))
    monkeypatch.setenv("GENRL_PROMPTS", str(d / "prompts.txt"))
    monkeypatch.setenv("VIDEOREWARD_DIR", "unused")
    _one_then_split(tmp_path, ["distill", "--config", str(ROOT / "configs/stream_r1_wan.yaml"), f"student={d / 'wan'}",
                               "stream_r1.reward=shapes", f"stream_r1.reward_weights={reward}", *SMALL],
                    accelerate_launch(2), steps=2)
    for name in ("student", "critic", "ema"):
        a = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "sp" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
    rows, ref = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                 for run in ("sp", "one"))
    # the generator loss (about 2e-6 here: the critic starts as a copy of the teacher) is a difference of two
    # scores, so its float error relative to its size is larger than theirs: 1.2e-4 measured at step 2
    for key, rel in (("grad_norm", 1e-4), ("critic_grad_norm", 1e-4), ("critic_loss", 1e-4), ("reward_vq", 1e-4),
                     ("loss", 1e-3)):
        assert [r[key] for r in rows if "loss" in r] == pytest.approx([r[key] for r in ref if "loss" in r], rel=rel), key


def test_wan_stream_r1_on_videoreward_with_activation_checkpointing_takes_the_same_step(run_cli, setup, monkeypatch,
                                                                                         tmp_path):
    """Stream-R1 weighted by a (tiny, random) VideoReward with saliency: with train.activation_checkpointing the
    student, the critic and the reward's saliency pass are checkpointed, and the step logs the same figures."""
    from rewards.videoalign import convert

    from tiny_videoalign import write_release

    d, _ = setup
    write_release(tmp_path)
    folder = convert(tmp_path / "release", tmp_path / "c", tmp_path / "base", template_file=str(tmp_path / "template.txt"))
    for name, value in (("WAN_DIR", d / "wan"), ("GENRL_PROMPTS", d / "prompts.txt"), ("VIDEOREWARD_DIR", folder)):
        monkeypatch.setenv(name, str(value))
    rows = {}
    for ckpt in ("false", "true"):
        out = tmp_path / f"run_{ckpt}"
        code, _, err = run_cli("distill", "--config", str(ROOT / "configs/stream_r1_wan.yaml"), f"out_dir={out}",
                               f"student={d / 'wan'}", "train.steps=1", f"train.activation_checkpointing={ckpt}",
                               "train.frozen_dtype=float32", *SMALL)
        assert code == 0, err
        rows[ckpt] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][0]
    assert {"reward_vq", "reward_ta", "temporal_w0"} <= set(rows["false"])
    for key in ("loss", "reward_vq", "reward_mq", "reward_ta", "temporal_w0", "rollout_weight_max"):
        assert rows["true"][key] == pytest.approx(rows["false"][key], rel=1e-5, abs=1e-7), key
