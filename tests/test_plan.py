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
    # parallel.sequence: of the splits of the 8 GPUs that the 40 heads of the 14B teacher and the 12 of the 1.3B
    # critic and student allow (1, 2, 4), 4 leaves each rank 1 of every 3-frame chunk, so a third of the activations
    split = big["options"][4]
    assert split["option"] == "data parallel, parallel.sequence=4, no checkpointing" and split["supported"]
    whole = big["options"][0]["per_gpu_bytes"]
    assert abs(whole - split["per_gpu_bytes"] - big["activation_bytes"]["none"] * 2 / 3) <= 1
    assert [o["option"] for o in plan["options"]][4].startswith("FSDP")  # one GPU: no split to offer


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
