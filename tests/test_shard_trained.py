"""Trained policies sharded over 2 gloo processes (train.shard_trained, FSDP2): the same GRPO updates as the
unsharded run, checkpoints that resume exactly, whole exported weights; and the sampling loop that keeps the
processes of a sharded policy in step."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tiny import accelerate_launch
from tiny_qwen import sft_qwen2vl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
EOS, PAD, VOCAB = 1, 0, 5


def _decode(ends: list[int], together: bool, generator: torch.Generator):
    """sample_completions over logits that favour <eos> at row r's step ends[r] (and never before); returns
    (ids, mask, passes run)."""
    from genrl.models.vlm import sample_completions

    calls = [0]

    def logits_at(k: int) -> torch.Tensor:
        out = torch.zeros(len(ends), VOCAB)
        out[:, EOS] = torch.tensor([30.0 if k >= e else -30.0 for e in ends])
        return out

    def step(tok):
        calls[0] += 1
        return logits_at(calls[0])

    ids, mask = sample_completions(logits_at(0), step, 8, 1.0, generator, EOS, PAD, together)
    return ids, mask, calls[0]


def _sampling_worker(rank, init, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    ends = [[1, 2], [4, 0]][rank]  # this process's rows are done after 3 tokens; the other's after 5
    alone = _decode(ends, False, torch.Generator().manual_seed(rank))
    g = torch.Generator().manual_seed(rank)
    together = _decode(ends, True, g)
    after = torch.Generator().manual_seed(rank)
    _decode(ends, False, after)
    result = {"equal": torch.equal(alone[0], together[0]) and torch.equal(alone[1], together[1]),
              "passes": (alone[2], together[2]), "rng": torch.equal(g.get_state(), after.get_state())}
    results = [None, None]
    dist.all_gather_object(results, result)
    if rank == 0:
        torch.save(results, out)
    dist.barrier()  # leave together (a rank leaving early can abort the other at exit)
    dist.destroy_process_group()


def test_sampling_together_runs_every_process_to_the_last_token_and_returns_what_each_samples_alone(tmp_path):
    mp.spawn(_sampling_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    r = torch.load(tmp_path / "out.pt")
    assert [x["passes"] for x in r] == [(2, 4), (4, 4)]  # alone: 3 and 5 tokens; together both run 5
    assert all(x["equal"] and x["rng"] for x in r)  # same ids, same mask, no extra draws from the generator


def _rows(folder):
    return [{k: v for k, v in json.loads(x).items() if k != "time"}
            for x in (folder / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _same_run(a_dir, b_dir, weights, rtol=1e-5, atol=1e-6):
    """The two runs logged the same rewards and (to float rounding) losses and gradient norms, and exported the
    same weights."""
    a, b = _rows(a_dir), _rows(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 2
    assert [r["reward"] for r in a] == [r["reward"] for r in b]  # the same rollouts
    assert any(r["grad_norm"] > 0 for r in a)
    for key in ("loss", "grad_norm", "kl"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=rtol, abs=1e-7), key
    wa, wb = load_file(str(a_dir / weights)), load_file(str(b_dir / weights))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rtol, atol=atol, msg=k)


def _launch(*args, quiet=True, mixed_precision="no"):
    r = subprocess.run([*accelerate_launch(2, mixed_precision), *args, *(["--quiet"] if quiet else [])], env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


GRPO = ["grpo", "--config", "configs/grpo_video_qa.yaml", "train.log_every=1", "train.sample_every=0",
        "train.checkpoint_every=1", "grpo.prompts_per_step=2", "grpo.group_size=3", "grpo.eval_num=4", "eval_num=4"]


def test_two_process_grpo_with_a_sharded_policy_equals_the_unsharded_run_and_resumes(tmp_path):
    """The shapes VLM: 3 steps unsharded against 2 sharded steps (policy and reference) and a resume to 3."""
    args = [*GRPO, "grpo.temperature=2.0", "optim.lr=1e-3", "grpo.max_new_tokens=16"]
    _launch(*args, "train.steps=3", f"out_dir={tmp_path / 'whole'}")
    sharded = [*args, "train.shard_trained=true", "train.shard_frozen=true", f"out_dir={tmp_path / 'sharded'}"]
    r = _launch(*sharded, "train.steps=2", quiet=False)
    held = {line.split(":")[0]: line for line in r.stderr.splitlines() if line.startswith("train.shard_")}
    assert " policy " in held["train.shard_trained"] and " reference " in held["train.shard_frozen"], r.stderr[-2000:]
    _launch(*sharded, "train.steps=3")
    _same_run(tmp_path / "whole", tmp_path / "sharded", "model.safetensors")
    ckpt = [load_file(str(tmp_path / d / "checkpoints" / "step_0000003" / "policy.safetensors")) for d in ("whole", "sharded")]
    assert all(torch.allclose(ckpt[0][k], ckpt[1][k], rtol=1e-5, atol=1e-6) for k in ckpt[0])
    state = torch.load(tmp_path / "sharded" / "checkpoints" / "step_0000003" / "state.pt", weights_only=False)
    assert state["shards_trained"] is True
    moments = state["stateful"]["optimizer"]["state"]  # whole AdamW moments, by parameter name
    assert "embed.weight" in moments and moments["embed.weight"]["exp_avg"].shape == ckpt[1]["embed.weight"].shape


def test_under_bf16_autocast_a_sharded_policy_gets_the_unsharded_gradients_and_gathers_in_bf16(tmp_path):
    """`--mixed_precision bf16`, 2 GRPO steps. Gathered in float32 (train.shard_gather=weights): the unsharded run's
    updates (autocast's weight cache, on, dropped the gradients of every weight cast in the no_grad sampling pass:
    gradient norm 0.354 against 0.849). Gathered in bfloat16 (the default): the same first step to bf16 rounding,
    float32 weights exported."""
    args = [*GRPO, "grpo.temperature=2.0", "optim.lr=1e-3", "grpo.max_new_tokens=16", "train.steps=2"]
    _launch(*args, f"out_dir={tmp_path / 'whole'}", mixed_precision="bf16")
    _launch(*args, "train.shard_trained=true", "train.shard_gather=weights", f"out_dir={tmp_path / 'fp32'}",
            mixed_precision="bf16")
    _same_run(tmp_path / "whole", tmp_path / "fp32", "model.safetensors")
    r = _launch(*args, "train.shard_trained=true", f"out_dir={tmp_path / 'bf16'}", quiet=False, mixed_precision="bf16")
    assert "train.shard_trained: policy " in r.stderr and ", gathered in bfloat16" in r.stderr, r.stderr[-2000:]
    a, b = _rows(tmp_path / "whole"), _rows(tmp_path / "bf16")
    assert a[0]["reward"] == b[0]["reward"] and b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-3)
    from genrl.models.registry import load_model

    start = load_model("shapes-vlm-sft", "vlm").state_dict()  # the recipe's policy
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "bf16"))
    assert all(wb[k].dtype == torch.float32 for k in wb)

    def dist(x, y):
        return sum(((x[k] - y[k]) ** 2).sum() for k in x).sqrt().item()

    assert dist(wb, wa) < 0.2 * dist(wa, start)  # measured 0.020 against 0.247: the same steps, to bf16 rounding


def test_grpo_on_a_qwen2vl_policy_sharded_and_split_over_2_processes_equals_one_process(tmp_path):
    """A transformers Qwen2-VL policy training its vision tower too: decoder layers, vision blocks, the final norm
    and the merger sharded, activation checkpointing on, and parallel.sequence=2 (its split-summed gradients
    reduce-scattered with FSDP's divisor set to the replicas, 1, not the processes, 2), against one process."""
    folder = sft_qwen2vl(tmp_path, ENV)
    args = [*GRPO, f"grpo.policy={folder}", "grpo.eval_num=2", "eval_num=2", "grpo.max_new_tokens=24",
            "grpo.temperature=1.5", "optim.lr=1e-2", "train.steps=2", "grpo.train_vision=true", "grpo.cache_video=false"]
    one = subprocess.run([sys.executable, "-m", "genrl.cli", *args, f"out_dir={tmp_path / 'one'}", "--quiet"], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    _launch(*args, "parallel.sequence=2", "train.shard_trained=true", "train.shard_frozen=true",
            "train.activation_checkpointing=true", f"out_dir={tmp_path / 'sharded'}")
    _same_run(tmp_path / "one", tmp_path / "sharded", "model/model.safetensors", rtol=1e-4, atol=1e-5)  # AdamW at lr 1e-2
    start = load_file(str(folder / "model.safetensors"))
    end = load_file(str(tmp_path / "sharded" / "model" / "model.safetensors"))
    for part in (".layers.", "visual.blocks.", "visual.merger."):  # the steps trained each
        assert any(not torch.equal(end[k], start[k]) for k in end if part in k), part
    assert json.loads((tmp_path / "sharded" / "eval.json").read_text())["num"] == 2


@pytest.mark.parametrize("args, message", [
    (["grpo", "--config", "configs/grpo_video_qa.yaml", "grpo.variant=reg_grpo"],
     "train.shard_trained: reg_grpo re-rolls only the groups its own process found saturated"),
    (["distill", "--config", "configs/dmd.yaml"], "train.shard_trained: the dmd method does not support it yet"),
], ids=["reg_grpo", "dmd"])
def test_shard_trained_refuses_methods_whose_processes_would_run_the_policy_unequally(run_cli, tmp_path, args, message):
    code, _, err = run_cli(*args, f"out_dir={tmp_path / 'run'}", "train.shard_trained=true", "--quiet")
    assert code == 2 and message in err and "valid: " in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_bench_shard_policy_reports_half_the_training_state_and_the_same_updates(run_cli, tmp_path):
    code, out, err = run_cli("bench", "shard-policy", "--dim", "32", "--depth", "2", "--rows", "2", "--tokens", "4",
                             "--rounds", "1", "--json", str(tmp_path / "s.json"), "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    held = r["raw"]["held_bytes"]
    assert r["shard_policy.held_ratio"] == round(held["sharded"] / held["whole"], 3)
    assert 0.45 <= r["shard_policy.held_ratio"] <= 0.6  # weights, gradients and both AdamW moments: half each
    assert r["shard_policy.max_abs_diff"] < 1e-6 and r["shard_policy.step_time_ratio"] > 0
    # a decoder layer at width 32 (4 heads, 2 key-value heads, MLP 128): two norms, q, kv, out, gate_up, down
    layer = 2 * 32 + (32 * 32 + 32) + (32 * 32 + 32) + 32 * 32 + 32 * 256 + 128 * 32
    assert r["raw"]["gathered_layer_bytes"] == {"float32": 4 * layer, "bfloat16": 2 * layer}
    assert all(len(v) == 1 for kind in r["raw"]["seconds"].values() for v in kind.values())


class _TwoLayers(torch.nn.Module):
    """Two layers (units of their own) and a weight no step uses: AdamW keeps no state for it."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(5, 5) for _ in range(2))
        self.unused = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.layers[1](self.layers[0](x).tanh())


def _resume_worker(rank, init, out):
    import copy

    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from genrl.parallel import shard
    from genrl.train.trainer import load_whole_optimizer_state, load_whole_state_dict, whole_state_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    fresh = _TwoLayers()
    model = shard(copy.deepcopy(fresh))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(rank))

    def step(m, o):
        m(x).pow(2).mean().backward()
        o.step()
        o.zero_grad()

    for _ in range(2):
        step(model, opt)
    opt.param_groups[0]["lr"] = 3e-3  # as a schedule would have moved it
    whole = StateDictOptions(full_state_dict=True)  # on every process, as each reads the checkpoint's files
    weights, moments = get_model_state_dict(model, options=whole), get_optimizer_state_dict(model, opt, options=whole)
    resumed = shard(copy.deepcopy(fresh))
    ropt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    load_whole_state_dict(resumed, weights)
    load_whole_optimizer_state(resumed, ropt, moments)
    for m, o in ((model, opt), (resumed, ropt)):
        step(m, o)
    a, b = whole_state_dict(model), whole_state_dict(resumed)
    result = {"same": all(torch.equal(a[k], b[k]) for k in a), "lr": ropt.param_groups[0]["lr"],
              "unused_state": [len(o.state[dict(m.named_parameters())["unused"]]) for m, o in ((model, opt), (resumed, ropt))]}
    if rank == 0:
        torch.save(result, out)
    dist.barrier()  # leave together (a rank leaving early can abort the other at exit)
    dist.destroy_process_group()


def test_a_sharded_optimizer_loaded_from_whole_state_takes_the_same_next_step(tmp_path):
    """Each process copies its shards of the whole weights and AdamW moments in (a resume): the next step equals
    the uninterrupted run's bit for bit; the learning rate comes back; a weight that had no gradient has no state."""
    mp.spawn(_resume_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    r = torch.load(tmp_path / "out.pt")
    assert r["same"] and r["lr"] == 3e-3 and r["unused_state"] == [0, 0]


def test_bench_shard_resume_copies_only_the_shards_from_the_mapped_checkpoint(run_cli, tmp_path):
    """A sharded resume maps the checkpoint's files and copies in only its shards: its private memory grows by its
    own AdamW moments and little else, where reading the files whole copies the checkpoint into every process."""
    code, out, err = run_cli("bench", "shard-resume", "--dim", "128", "--depth", "2", "--json", str(tmp_path / "r.json"), "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    size, copied = r["raw"]["checkpoint_bytes"], r["raw"]["copied_bytes"]
    assert r["shard_resume.same_weights"] is True
    assert min(copied["whole"]) > 0.5 * size  # measured 13.6 MB of a 12.5 MB checkpoint
    assert max(copied["mapped"]) < 0.2 * size and r["shard_resume.copied_ratio"] < 0.3  # measured 1.3 MB, 0.096x


def test_two_process_sft_resumes_exactly_and_a_sharded_policy_matches_it(tmp_path):
    """SFT trains attribute heads beside the VLM: their gradients are averaged over the processes too (they were
    not, so the processes' heads drifted apart and a resume, which loads the main process's, changed the loss).
    3 straight steps = 2 steps and a resume, exactly; the policy sharded (the heads whole) matches to rounding."""
    args = ["sft", "--config", "configs/sft_video_qa.yaml", "train.log_every=1", "sft.batch_size=4", "sft.eval_num=2",
            "eval_num=2", "train.sample_every=2", "train.checkpoint_every=1"]
    _launch(*args, "train.steps=3", f"out_dir={tmp_path / 'straight'}")
    for steps in (2, 3):
        _launch(*args, f"train.steps={steps}", f"out_dir={tmp_path / 'resumed'}")
    _launch(*args, "train.steps=3", "train.shard_trained=true", f"out_dir={tmp_path / 'sharded'}")
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "resumed") and len(_rows(tmp_path / "straight")) == 3
    for role in ("policy", "attribute_heads"):
        a, b = (load_file(str(tmp_path / d / "checkpoints" / "step_0000003" / f"{role}.safetensors"))
                for d in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), role
    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "sharded")
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5), key
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "sharded"))
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-5) for k in wa)
    assert json.loads((tmp_path / "sharded" / "eval.json").read_text())["num"] == 2
