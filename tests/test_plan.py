"""`genrl plan`: exact parameter counts from meta-device builds, memory per role from them."""

import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from tiny_wan import tiny_wan_folder

ROOT = Path(__file__).resolve().parents[1]


def _plan(run_cli, tmp_path, *args):
    out = tmp_path / "plan.json"
    code, stdout, err = run_cli("plan", "--config", str(ROOT / "configs/stream_r1_wan.yaml"), "--json", str(out), *args)
    assert code == 0, err
    return json.loads(out.read_text()), stdout


def _check_role_memory(roles):
    for r in roles:
        bytes_per = {"float32": 4, "bfloat16": 2}[r["dtype"]]
        assert r["weight_bytes"] == r["params"] * bytes_per, r["name"]
        assert r["state_bytes"] == (r["params"] * 12 if r["trainable"] else 0), r["name"]  # fp32 grads + 2 AdamW moments
        assert r["total_bytes"] == r["weight_bytes"] + r["state_bytes"]


def test_plan_of_the_wan_recipe_counts_the_published_architectures(run_cli, tmp_path, monkeypatch):
    for name in ("WAN_DIR", "GENRL_PROMPTS", "VIDEOREWARD_DIR"):
        monkeypatch.delenv(name, raising=False)
    plan, stdout = _plan(run_cli, tmp_path)
    roles = {r["name"]: r for r in plan["roles"]}
    assert roles["teacher"]["params"] == 1_418_996_800  # Wan2.1-T2V-1.3B's transformer: about 1.4B
    assert roles["text encoder"]["params"] == 5_680_910_336 and roles["reward"]["params"] == 2_208_985_600
    assert [n for n, r in roles.items() if r["trainable"]] == ["critic", "student"]
    assert roles["student"]["total_bytes"] == 16 * 1_418_996_800 and roles["teacher"]["dtype"] == "bfloat16"
    _check_role_memory(plan["roles"])
    assert plan["tokens"] == 21 * 30 * 52 and "1.42B" in stdout
    big, _ = _plan(run_cli, tmp_path, "arch.teacher=wan2.1-t2v-14b", "arch.critic=wan2.1-t2v-1.3b", "--gpus", "8")
    roles = {r["name"]: r for r in big["roles"]}
    assert roles["teacher"]["params"] == 14_288_491_584 and roles["critic"]["params"] == 1_418_996_800
    fsdp = big["options"][-1]
    assert fsdp["per_gpu_bytes"] < big["options"][1]["per_gpu_bytes"] and not fsdp["supported"]
    # train.shard_frozen: the 14B teacher's bf16 weights (2 bytes a parameter) split over the 8 GPUs
    shard = big["options"][3]
    assert "train.shard_frozen" in shard["option"] and shard["supported"]
    assert abs(big["options"][1]["per_gpu_bytes"] - shard["per_gpu_bytes"] - 2 * 14_288_491_584 * 7 / 8) <= 1
    # the largest step: the student's rollout (its activations and the KV cache beside them) or the critic's pass
    # (with Stream-R1's reward saliency pass beside the rollout: VideoReward reads 10 of the 81 frames, 2 a second
    # of 16, at 336 x 588 within 448 x 448: 5 frame pairs of 24 x 42 patches, merged 2 x 2, and 256 text tokens)
    student, critic, reward = big["passes"]["student"], big["passes"]["critic"], big["reward_pass"]
    assert student["cache"] > 0 and critic["cache"] == 0
    assert reward["frames_read"] == 10 and reward["size"] == [336, 588] and reward["vision_tokens"] == 5 * 24 * 42
    assert reward["text_tokens"] == 5 * 24 * 42 // 4 + 256 and reward["pixels"] == 81 * 480 * 832 * 4 * (3 + 3 + 3)
    assert reward["total"] == reward["vision"] + reward["language"] + reward["pixels"] and reward["vision"] > 0
    assert reward["total_checkpointed"] == reward["vision_checkpointed"] + reward["language_checkpointed"] + reward["pixels"]
    assert reward["vision_checkpointed"] < reward["vision"] / 5 and reward["language_checkpointed"] < reward["language"] / 5
    for key, kept, beside in (("none", "kept", "total"), ("checkpointing", "checkpointed", "total_checkpointed")):
        assert big["activation_bytes"][key] == max(student[kept] + student["cache"] + reward[beside], critic[kept])
    assert big["activation_bytes"]["checkpointing"] < big["activation_bytes"]["none"] / 5
    # parallel.sequence: of the splits of the 8 GPUs that the 40 heads of the 14B teacher and the 12 of the 1.3B
    # critic and student allow (1, 2, 4), 4 leaves each rank 1 of every 3-frame chunk of the rollout (a third of
    # its activations) and a quarter of the KV cache's heads; the critic's pass, 6 of the 21 frames
    split = big["options"][4]
    assert split["option"] == "data parallel, parallel.sequence=4, no checkpointing" and split["supported"]
    whole = big["options"][0]["per_gpu_bytes"]
    per_rank = max(int(student["kept"] / 3 + student["cache"] / 4) + reward["total"], int(critic["kept"] * 6 / 21))
    assert abs(whole - split["per_gpu_bytes"] - (big["activation_bytes"]["none"] - per_rank)) <= 2
    assert [o["option"] for o in plan["options"]][4].startswith("FSDP")  # one GPU: no split to offer
    plain, _ = _plan(run_cli, tmp_path, "stream_r1.intra=false")  # no saliency: the reward runs without gradients
    assert plain["reward_pass"] is None and plain["passes"] == plan["passes"]
    assert plain["activation_bytes"]["none"] == plan["activation_bytes"]["none"] - plan["reward_pass"]["total"]


def test_plan_reads_a_local_folder_exactly(run_cli, tmp_path):
    pipe = tiny_wan_folder(tmp_path / "wan")
    plan, _ = _plan(run_cli, tmp_path, f"teacher={tmp_path / 'wan'}", f"student={tmp_path / 'wan'}",
                    "stream_r1.reward=shapes", "height=32", "width=32", "world.frames=9")
    roles = {r["name"]: r for r in plan["roles"]}
    assert roles["teacher"]["params"] == sum(p.numel() for p in pipe.transformer.parameters())
    assert roles["student"]["params"] == roles["teacher"]["params"]
    assert roles["text encoder"]["params"] == sum(p.numel() for p in pipe.text_encoder.parameters())
    assert roles["vae"]["params"] == sum(p.numel() for p in pipe.vae.parameters())
    assert "reward" not in roles  # the shapes reward is no part of a GPU plan
    assert plan["tokens"] == 3 * 2 * 2
    _check_role_memory(plan["roles"])


def test_plan_names_a_missing_architecture(run_cli, monkeypatch):
    monkeypatch.delenv("WAN_DIR", raising=False)
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/stream_r1_wan.yaml"), "arch.teacher=")
    assert code == 2 and "arch.teacher" in err and len(err.strip().splitlines()) == 1


def test_measured_passes_extrapolate_exactly_to_more_blocks_and_larger_frames():
    """The plan measures a pass at 2 blocks and 4 and 8 tokens a frame; a 3-block pass at 12 and 20 tokens a
    frame, measured whole, keeps exactly what it extrapolates to (streamed against the KV cache, and whole)."""
    import torch

    from genrl.memory import tally
    from genrl.plan import WAN_COMMON, _wan_pass, measure_pass

    cfg = dict(WAN_COMMON, num_attention_heads=2, attention_head_dim=32, ffn_dim=160, text_dim=48, num_layers=2)
    for stream in ((3, 6, 3), None):
        for per_frame in (12, 20):
            planned = measure_pass("wan_transformer", cfg, 3, per_frame, 9, 2, 16, stream)
            whole = _wan_pass(cfg, per_frame, 9, 2, 16, stream, layers=3)
            assert planned.kept == whole["kept"] and planned.cache == whole["cache_all"]
            assert (planned.cache > 0) == (stream is not None) and planned.checkpointed < planned.kept / 2

    # what checkpointing keeps: nothing a block saves reaches autograd's graph; outside the blocks only what
    # the first block saved beyond the second (tensors every block shares) and the blocks' inputs can move
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**dict(cfg, num_layers=2))
    x, text = torch.randn(1, 16, 3, 2, 8), torch.randn(1, 16, 48)
    outs = []
    run = lambda: outs.append(model(x, torch.tensor([500.0]), text, return_dict=False)[0])  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = tally(run, model.blocks, list(model.parameters()))
        model.enable_gradient_checkpointing()
        ckpt = tally(run, model.blocks, list(model.parameters()))
    assert all(plain.blocks.values()) and not any(ckpt.blocks.values()) and ckpt.inputs == plain.inputs
    shared = plain.blocks[0] - plain.blocks[1]
    assert plain.outside <= ckpt.outside <= plain.outside + shared + sum(plain.inputs.values())


def test_plan_blanks_only_the_environment_variables_without_a_default(run_cli, tmp_path, monkeypatch):
    for name in ("WAN_DIR", "GENRL_PROMPTS", "VIDEOREWARD_DIR", "GENRL_TEST_UNSET"):
        monkeypatch.delenv(name, raising=False)
    text = (ROOT / "configs/stream_r1_wan.yaml").read_text()
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(text.replace("out_dir: runs/stream_r1_wan", "out_dir: ${oc.env:GENRL_TEST_UNSET,runs/x}"))
    out = tmp_path / "plan.json"
    code, stdout, err = run_cli("plan", "--config", str(cfg), "--json", str(out))
    assert code == 0, err
    assert "(GENRL_PROMPTS, VIDEOREWARD_DIR, WAN_DIR not set" in stdout  # the default one is left to its default
