"""`genrl plan` of a GRPO recipe with a transformers Qwen-VL policy: exact parameter counts of the released
architectures, the clip's token count as the policy's own processor gives it, and measured scoring passes
that extrapolate exactly to more layers, tokens, completions and vocabulary."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_qwen import tiny_qa_qwen2vl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_presets_count_the_released_models():
    from genrl.plan import PRESETS, _build_meta

    params = {name: sum(p.numel() for p in _build_meta(*PRESETS[name]).parameters())
              for name in ("qwen2-vl-2b", "qwen2-vl-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b")}
    assert params["qwen2-vl-2b"] == 2_208_985_600  # as VideoReward's backbone
    # the model cards' sizes: 8.29B, 3.75B, 8.29B
    assert [round(params[n] / 1e9, 2) for n in ("qwen2-vl-7b", "qwen2.5-vl-3b", "qwen2.5-vl-7b")] == [8.29, 3.75, 8.29]


def test_measured_passes_extrapolate_exactly():
    from genrl.plan import text_config
    from genrl.policy_plan import _head_fit, _head_pass, _lm_pass, head_memory, lm_memory
    from transformers import Qwen2VLConfig

    cfg = Qwen2VLConfig(text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
                        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2)).to_dict()
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type") and not k.startswith("_")}
    assert text_config(cfg)["hidden_size"] == 64
    measured = [_lm_pass("qwen2_vl", cfg, torch.float32, n) for n in (64, 128)]
    for tokens in (96, 200):
        whole = _lm_pass("qwen2_vl", cfg, torch.float32, tokens, layers=3)
        planned = lm_memory(measured, 3, tokens)
        assert planned.kept == whole["kept"] and planned.checkpointed < planned.kept
    fit = _head_fit(64, torch.float32, 1.0)
    for completion, vocab in ((24, 3000), (5, 700)):
        assert head_memory(fit, completion, vocab) == pytest.approx(_head_pass(64, vocab, completion, torch.float32, 1.0),
                                                                    abs=1e-6)
    # a float32 policy under autocast: the head's bf16 weight copy (vocab x 64 x 2 bytes) is the term in vocab alone
    assert fit["c"] == pytest.approx(64 * 2) and fit["e"] == pytest.approx(8)  # log-softmax output + the held logits

    # the vision tower (Stream-R1's reward saliency pass): measured at 2 blocks and 16 and 32 patches, a 3-block
    # pass over 64 and 96 patches, measured whole, keeps exactly the extrapolation (bf16 weights, as a frozen reward)
    from genrl.policy_plan import VISION_MEASURED, _vision_pass, vision_memory

    from functools import partial

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                             apply_activation_checkpointing,
                                                                             checkpoint_wrapper)

    from genrl.memory import tally
    from genrl.plan import materialise

    measured = [_vision_pass("qwen2_vl", cfg, torch.bfloat16, n) for n in VISION_MEASURED]
    deeper = dict(cfg, vision_config=dict(cfg["vision_config"], depth=3))
    for patches in (64, 96):
        whole = _vision_pass("qwen2_vl", cfg, torch.bfloat16, patches, layers=3)
        planned = vision_memory(measured, 3, patches)
        assert planned.kept == whole["kept"] > 0
        # checkpointed (the reward's wrappers): what the forward keeps, and one block's set run again in backward,
        # is at most the planned figure (which counts every block's input; planned 282,880 against 274,688 at 64)
        model = materialise("qwen2_vl", deeper, torch.bfloat16)
        blocks = {id(b) for b in model.model.visual.blocks}
        apply_activation_checkpointing(model, partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
                                       check_fn=lambda m: id(m) in blocks)  # noqa: B023
        pixels = torch.randn(patches, 3 * 2 * 14 * 14, dtype=torch.bfloat16, requires_grad=True)
        grid = torch.tensor([[1, 4, patches // 4]])

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.model.visual(pixels, grid_thw=grid)  # noqa: B023

        kept = tally(run, [], list(model.parameters())).total
        assert kept + whole["call"] <= planned.checkpointed < planned.kept / 1.5


def test_plan_of_a_grpo_recipe_on_a_local_qwen_folder(tmp_path, run_cli):
    from genrl.cli.qa import GRPOConfig
    from genrl.config import load_config
    from genrl.methods.grpo import GRPOMethodConfig
    from genrl.methods.qa import load_policy
    from genrl.policy_plan import lm_memory, plan_grpo

    folder = tiny_qa_qwen2vl(tmp_path / "qwen")
    out = tmp_path / "plan.json"
    code, stdout, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"), f"grpo.policy={folder}",
                                "grpo.prompts_per_step=4", "train.grad_accum=2", "--json", str(out))
    assert code == 0, err
    plan = json.loads(out.read_text())
    policy = load_policy(str(folder))
    roles = {r["name"]: r for r in plan["roles"]}
    assert roles["policy"]["params"] == roles["reference"]["params"] == sum(p.numel() for p in policy.parameters())
    assert roles["policy"]["frozen_params"] == sum(p.numel() for p in policy.visual.parameters())
    assert roles["policy"]["state_bytes"] == 12 * (roles["policy"]["params"] - roles["policy"]["frozen_params"])
    assert roles["reference"]["dtype"] == "bfloat16" and not roles["reference"]["trainable"]
    assert plan["video_tokens"] == policy.video_tokens  # what the policy's processor makes of the clip
    assert plan["completion_tokens"] == GRPOMethodConfig().max_new_tokens and plan["rows_per_pass"] == 2 * 8
    assert plan["tokens_per_row"] == 96 + policy.video_tokens + plan["completion_tokens"]
    options = plan["options"]
    assert [o["option"] for o in options] == ["as configured (train.grad_accum=2)", "+ activation checkpointing",
                                               "+ one question's group a pass (train.grad_accum=4)",
                                               "+ train.shard_trained and shard_frozen over 1 GPUs"]
    assert options[0]["per_gpu_bytes"] > options[1]["per_gpu_bytes"] > options[2]["per_gpu_bytes"]
    assert all(o["supported"] for o in options)
    # sharded: every role's bytes over the GPUs, the root's weights (all but decoder layers and vision blocks)
    # and two decoder layers gathered in bf16 (train.shard_gather=auto under the bf16 autocast the plan measures
    # with), and the root's and a layer's gradients in float32
    root = sum(p.numel() for n, p in policy.named_parameters() if ".layers." not in n and ".blocks." not in n)
    layer = sum(p.numel() for n, p in policy.named_parameters() if ".layers.0." in n)
    assert plan["gathered_bytes"] == 2 * (root + 2 * layer) + 4 * (root + layer)
    held = sum(r["total_bytes"] for r in plan["roles"])
    assert options[3]["per_gpu_bytes"] == int(held + plan["gathered_bytes"] + max(options[2]["per_gpu_bytes"] - held,
                                                                                  plan["sampling_cache_bytes"]))
    assert plan["sequence_parallel"] == 1  # one GPU: no split row

    # 2 GPUs: parallel.sequence=2 (it divides the 4 heads) takes each layer over half of every row's tokens
    # (and gathered in the weights' float32: train.shard_gather=weights)
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"), f"grpo.policy={folder}",
                           "grpo.prompts_per_step=4", "train.grad_accum=2", "--gpus", "2", "--json", str(out),
                           "train.shard_gather=weights")
    assert code == 0, err
    two = json.loads(out.read_text())
    assert two["gathered_bytes"] == 4 * (2 * root + 3 * layer)
    assert two["sequence_parallel"] == 2 and two["options"][-1]["option"] == "+ parallel.sequence=2"
    p = plan_grpo(load_config(GRPOConfig, str(ROOT / "configs/grpo_video_qa.yaml"),
                              [f"grpo.policy={folder}", "grpo.prompts_per_step=4", "train.grad_accum=2"]))
    assert p.heads == policy.model.config.text_config.num_attention_heads
    whole, half = p.scoring(4), p.scoring(4, 2)
    lm = lambda tokens: lm_memory(p.lm, p.layers, p.rows(4) * tokens).checkpointed  # noqa: E731
    assert whole.checkpointed - half.checkpointed == lm(p.tokens) - lm(-(-p.tokens // 2)) > 0
    assert two["split_scoring"] == dict(half.__dict__)
    assert two["options"][-1]["per_gpu_bytes"] == int(held / 2 + two["gathered_bytes"]
                                                      + max(half.checkpointed, two["sampling_cache_bytes"]))
    assert "scoring, measured" in stdout and "sampling:" in stdout


def test_plan_of_a_grpo_recipe_names_what_it_covers(run_cli):
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"))
    assert code == 2 and "Qwen2-VL / Qwen2.5-VL" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"), "--arch", "qwen9")
    assert code == 2 and "unknown architecture 'qwen9'" in err and "qwen2-vl-7b" in err
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"), "--arch", "wan2.1-t2v-1.3b")
    assert code == 2 and "unknown architecture 'wan2.1-t2v-1.3b' for policy; valid: videoreward-qwen2-vl-2b" in err
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/grpo_video_qa.yaml"), "grpo.policy=/no/such/folder")
    assert code == 2 and "name its architecture with --arch NAME (" in err and "wan2.1" not in err
    code, _, err = run_cli("plan", "--config", str(ROOT / "configs/stream_r1_wan.yaml"), "--arch", "qwen2-vl-7b")
    assert code == 2 and "arch.teacher=" in err
