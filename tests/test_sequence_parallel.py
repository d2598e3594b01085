"""Ulysses sequence parallelism on 2 gloo processes equals one process: attention, a whole DiT forward and
backward, bidirectional and block-causal, frame counts the ranks divide and ones they do not."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from genrl.errors import UsageError

from tiny import accelerate_launch

CASES = [(6, False), (6, True), (5, False), (7, True)]  # (frames, causal): even and uneven over 2 ranks


def _dit():
    from genrl.models.dit import DiTConfig, VideoDiT

    torch.manual_seed(0)
    dit = VideoDiT(DiTConfig(dim=32, depth=2, heads=4, text_dim=16, mlp_ratio=1.0, in_channels=4, patch=2))
    for p in dit.parameters():  # the zero-initialised head and modulation would hide mistakes
        torch.nn.init.normal_(p, std=0.2)
    return dit


def _inputs(frames):
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, frames, 4, 4, 4, generator=g)
    t = torch.rand(2, frames, generator=g) * 1000
    text = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = torch.randn(2, frames, 4, 4, 4, generator=g)  # the loss's weights, so every output element matters
    return x, t, text, mask, w


def _worker(rank, init, out):
    import copy

    import torch.distributed as dist

    from genrl.parallel import SequenceParallelDiT, UlyssesAttention

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = {}
    # attention alone: a random mask, sequence shards in, sequence shards out
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=g, requires_grad=True) for _ in range(3))
    m = torch.rand(10, 10, generator=g) > 0.3
    m |= torch.eye(10, dtype=torch.bool)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
    (ref * torch.arange(10.0)[None, None, :, None]).sum().backward()
    want = [q.grad.clone(), k.grad.clone(), v.grad.clone()]
    mine = slice(5 * rank, 5 * rank + 5)
    ql, kl, vl = (x.detach()[:, :, mine].clone().requires_grad_(True) for x in (q, k, v))
    o = UlyssesAttention()(ql, kl, vl, m)
    (o * torch.arange(10.0)[mine][None, None, :, None]).sum().backward()
    for a, b in ((ql.grad, want[0]), (kl.grad, want[1]), (vl.grad, want[2])):
        grad = b[:, :, mine]
        torch.testing.assert_close(a, grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o, ref.detach()[:, :, mine], rtol=1e-5, atol=1e-5)

    for frames, causal in CASES:
        dit = _dit()
        single = copy.deepcopy(dit)
        x, t, text, mask, w = _inputs(frames)
        y = single(x, t, text, mask, causal=causal)
        (y * w).sum().backward()
        sp = SequenceParallelDiT(dit)
        ys = sp(x, t, text, mask, causal=causal)
        torch.testing.assert_close(ys, y.detach(), rtol=1e-5, atol=1e-5)
        own = sp.local_frames(frames)
        (ys[:, own] * w[:, own]).sum().backward()  # each rank's loss covers its own frames
        for (name, a), b in zip(dit.named_parameters(), single.parameters()):
            grad = a.grad.clone()
            dist.all_reduce(grad)  # summed over the sequence-parallel group
            torch.testing.assert_close(grad, b.grad, rtol=1e-4, atol=1e-5, msg=f"{name} ({frames}, {causal})")
        results[(frames, causal)] = float((ys - y).abs().max())
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_ulysses_equals_one_process_for_attention_and_a_whole_dit(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    assert set(results) == set(CASES) and max(results.values()) < 1e-5


def test_sequence_parallel_needs_its_processes_and_divisible_heads():
    from genrl.parallel import apply_sequence_parallel

    with pytest.raises(UsageError, match="needs 2 processes"):
        apply_sequence_parallel(_dit(), 2)


TEACHER = ["flow.model.dit.dim=24", "flow.model.dit.depth=1", "flow.model.dit.heads=2", "flow.model.dit.text_dim=16",
           "flow.model.dit.mlp_ratio=1.0", "flow.model.text.dim=16", "flow.model.text.layers=1",
           "flow.model.text.heads=2", "flow.model.autoencoder.width=8", "flow.batch_size=2", "flow.num_samples=2",
           "flow.sample_steps=2", "world.frames=5", "train.log_every=1", "train.checkpoint_every=2",
           "optim.warmup_steps=1", "train.steps=3", "--quiet"]


def _one_then_split(tmp_path, args: list[str], launcher: list[str], steps: int) -> None:
    """``genrl ARGS`` in one process to ``steps`` (into tmp_path/one), and under ``launcher`` (a command prefix ending
    in ``-m genrl.cli``) with ``parallel.sequence=2``, stopped one step short and resumed to ``steps`` (tmp_path/sp)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "genrl.cli", *args, f"train.steps={steps}", f"out_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    for n in (steps - 1, steps):  # stop one step short, then resume
        r = subprocess.run([*launcher, *args, "parallel.sequence=2", f"out_dir={tmp_path / 'sp'}", f"train.steps={n}"],
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]


def test_pretrain_with_parallel_sequence_2_under_accelerate_equals_one_process(tmp_path):
    """Frames 5 over 2 ranks (uneven); 2 steps, then a resume to 3, against a plain 3-step run."""
    import json

    from safetensors.torch import load_file

    from genrl.models.autoencoder import Autoencoder, AutoencoderConfig
    from genrl.models.registry import save_weights

    torch.manual_seed(0)
    ae = str(save_weights(Autoencoder(AutoencoderConfig(width=8)), tmp_path / "ae.safetensors", "autoencoder",
                          AutoencoderConfig(width=8)))
    _one_then_split(tmp_path, ["pretrain", f"flow.autoencoder={ae}", *TEACHER], accelerate_launch(2), steps=3)
    a = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "sp" / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [json.loads(l) for l in (tmp_path / "sp" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in rows if "loss" in r] == pytest.approx([r[key] for r in ref if "loss" in r], rel=1e-4), key


def test_bench_sp_writes_per_length_ratios(run_cli, tmp_path):
    import json

    code, out, err = run_cli("bench", "sp", "--frames", "4,12", "--rounds", "1", "--dim", "32", "--heads", "2",
                             "--side", "4", "--json", str(tmp_path / "sp.json"), "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "sp.json").read_text())
    assert {"sp.dit.activation_ratio.4", "sp.dit.activation_ratio.12", "sp.dit.time_ratio.12"} <= set(r)
    # each rank holds half the tokens: its saved activations shrink, more so as attention dominates
    assert r["sp.dit.activation_ratio.12"] < r["sp.dit.activation_ratio.4"] < 1.0
    assert r["sp.vlm.activation_ratio.12"] < 0.75 and r["sp.vlm.activation_ratio.4"] < 1.0
    assert r["sp.wan.activation_ratio.12"] < 0.75 and r["sp.wan.activation_ratio.4"] < 1.0
    assert r["sp.qwen.activation_ratio.12"] < 0.75 and r["raw"]["12"]["qwen"]["tokens"] == 12 * 4
    assert r["sp.stream.activation_ratio.12"] < 1.0 and r["raw"]["12"]["stream"]["tokens"] == 12 * 4
    raw = r["raw"]["12"]
    assert raw["tokens"] == 12 * 4 and len(raw["seconds"]["sp1"]) == 1
    assert raw["vlm"]["tokens"] == raw["wan"]["tokens"] == 12 * 4 and len(raw["wan"]["seconds"]["sp2"]) == 1


def _vlm_worker(rank, init, out):
    import copy

    import torch.distributed as dist

    from genrl.methods.qa import build_vlm, prompts, targets
    from genrl.parallel import apply_sequence_parallel_vlm
    from genrl.worlds.qa import ShapesQA

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    qa = ShapesQA()
    single = build_vlm("debug", qa)
    split = apply_sequence_parallel_vlm(copy.deepcopy(single), 2)
    videos, items = qa.items("train", range(3))
    p_ids, p_mask = prompts(single, items)
    t_ids, t_mask = targets(single, items)
    lengths = []
    pad = int((~p_mask[0]).sum())
    cases = [(videos, p_ids, p_mask, t_ids, t_mask, 0), (videos, p_ids, p_mask, t_ids, t_mask, 1),
             # one row without padding: the causal kernel path (no mask), even and odd lengths
             (videos[:1], p_ids[:1, pad:], p_mask[:1, pad:], t_ids[:1], t_mask[:1], 0),
             (videos[:1], p_ids[:1, pad:], p_mask[:1, pad:], t_ids[:1], t_mask[:1], 1)]
    for videos, p_ids, p_mask, t_ids, t_mask, extra in cases:  # lengths and their parity change with the completion
        ids, mask = t_ids[:, : t_ids.shape[1] - extra], t_mask[:, : t_mask.shape[1] - extra]
        w = torch.randn(ids.shape, generator=torch.Generator().manual_seed(extra))
        single.zero_grad()
        split.zero_grad()
        a = single.token_logprobs(single.encode_video(videos), p_ids, p_mask, ids, mask)
        b = split.token_logprobs(split.encode_video(videos), p_ids, p_mask, ids, mask)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        (a * w * mask).sum().backward()
        (b * w * mask).sum().backward()
        for (name, p), q in zip(split.named_parameters(), single.parameters()):  # whole on every rank
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(g, q.grad if q.grad is not None else torch.zeros_like(q), rtol=1e-4,
                                       atol=1e-6, msg=name)
        lengths.append(2 + single.video_tokens + p_ids.shape[1] + ids.shape[1])
    if rank == 0:
        torch.save(lengths, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_sequence_parallel_vlm_pass_equals_one_process(tmp_path):
    mp.spawn(_vlm_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    lengths = torch.load(tmp_path / "out.pt")
    assert {n % 2 for n in lengths[:2]} == {0, 1} and {n % 2 for n in lengths[2:]} == {0, 1}  # even and uneven splits


def _stream_worker(rank, init, out):
    import copy

    import torch.distributed as dist

    from genrl.models.video_model import StreamingConfig
    from genrl.parallel import apply_sequence_parallel

    from tiny import tiny_video_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model = tiny_video_model(seed=4, streaming=True, depth=2)
    # a 9-frame window with 3 sink frames: a 15-frame video evicts from the cache twice
    model.cfg.streaming = StreamingConfig(enabled=True, timesteps=[1000.0, 750.0, 500.0, 250.0], local_frames=9,
                                          sink_frames=3, context_noise=40.0)
    for p in model.dit.parameters():  # the zero-initialised head and modulation would hide mistakes
        torch.nn.init.normal_(p, std=0.2)
    single = copy.deepcopy(model)
    prompts = ["a big blue circle moving up fast on a light background", "a small red square moving left slowly"]
    want = torch.cat(list(single.stream(prompts, 15, torch.Generator().manual_seed(7))), dim=1)
    apply_sequence_parallel(model.dit, 2)
    got = torch.cat(list(model.stream(prompts, 15, torch.Generator().manual_seed(7))), dim=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the cache is sharded by heads: this rank holds its heads of every cached frame, and only those
    text = single.encode_text(prompts)
    chunk = torch.randn(2, 3, *want.shape[2:], generator=torch.Generator().manual_seed(1))
    caches = [single.new_cache(), model.new_cache()]
    for m, cache in zip((single, model), caches):
        for _ in range(3):
            m.write_cache(chunk, text, cache, torch.Generator().manual_seed(2))
    heads = single.dit.cfg.heads
    mine = slice(rank * heads // 2, (rank + 1) * heads // 2)
    for block in range(2):
        assert caches[1].k[block].shape[1] == heads // 2 and caches[1].frame_ids == caches[0].frame_ids
        torch.testing.assert_close(caches[1].k[block], caches[0].k[block][:, mine], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(caches[1].v[block], caches[0].v[block][:, mine], rtol=1e-5, atol=1e-5)
    if rank == 0:
        torch.save({"diff": float((got - want).abs().max()), "frames": got.shape[1], "cached": caches[1].frame_ids,
                    "per_rank": caches[1].k[0].numel(), "whole": caches[0].k[0].numel()}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_streaming_with_a_head_sharded_kv_cache_equals_the_unsharded_stream(tmp_path):
    """Chunks of 3 frames over 2 ranks (uneven: one padded frame), sink frames and evictions, context noise."""
    mp.spawn(_stream_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    r = torch.load(tmp_path / "out.pt")
    assert r["frames"] == 15 and r["diff"] < 1e-5
    assert r["cached"] == [0, 1, 2, 6, 7, 8] and r["per_rank"] * 2 == r["whole"]


# (frames, causal, one timestep per frame, activation checkpointing): 4 frames split evenly over 2 ranks, 5 not
WAN_CASES = [(f, causal, per_frame, False) for f in (4, 5) for causal in (False, True) for per_frame in (False, True)]
WAN_CASES.append((5, True, True, True))


def _wan_dit(checkpointing=False, chunk_frames=2):
    from genrl.models.wan import WanDiT, WanDiTConfig

    from tiny_wan import tiny_wan_components

    dit = WanDiT(tiny_wan_components(seed=0)["transformer"], WanDiTConfig(chunk_frames=chunk_frames))
    if checkpointing:
        dit.enable_activation_checkpointing()
    return dit.train()


def _wan_worker(rank, init, out):
    import copy

    import torch.distributed as dist

    from genrl.parallel import apply_sequence_parallel, local_bytes, shard_frozen

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = {}
    for case in WAN_CASES:
        frames, causal, per_frame, checkpointing = case
        dit = _wan_dit(checkpointing)
        single = copy.deepcopy(dit)
        g = torch.Generator().manual_seed(frames)
        x = torch.randn(2, frames, 16, 4, 4, generator=g)
        t = torch.rand(2, frames, generator=g) * 1000 if per_frame else torch.rand(2, generator=g) * 1000
        text = torch.randn(2, 6, 32, generator=g)
        w = torch.randn(2, frames, 16, 4, 4, generator=g)  # the loss's weights, so every output element matters
        xs, texts = x.clone().requires_grad_(True), text.clone().requires_grad_(True)
        y = single(xs, t, texts, causal=causal)
        (y * w).sum().backward()
        apply_sequence_parallel(dit, 2)
        xp, textp = x.clone().requires_grad_(True), text.clone().requires_grad_(True)
        yp = dit(xp, t, textp, causal=causal)
        torch.testing.assert_close(yp, y.detach(), rtol=1e-5, atol=1e-5)
        per = -(-frames // 2)
        own = slice(rank * per, min(frames, (rank + 1) * per))
        (yp[:, own] * w[:, own]).sum().backward()  # each rank's loss covers its own frames
        for (name, a), b in zip(dit.named_parameters(), single.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=f"{name} {case}")
        torch.testing.assert_close(xp.grad, xs.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(textp.grad, texts.grad, rtol=1e-4, atol=1e-5)
        results[case] = float((yp - y).abs().max())
    # a frozen teacher sharded over the ranks (train.shard_frozen) and then split by frames
    dit = _wan_dit().eval().requires_grad_(False)
    whole = copy.deepcopy(dit)
    apply_sequence_parallel(shard_frozen(dit), 2)
    g = torch.Generator().manual_seed(9)
    x, t, text = torch.randn(2, 5, 16, 4, 4, generator=g), torch.rand(2, 5, generator=g) * 1000, torch.randn(2, 6, 32, generator=g)
    with torch.no_grad():
        for causal in (False, True):
            results[("sharded", causal)] = float((dit(x, t, text, causal=causal) - whole(x, t, text, causal=causal)).abs().max())
    results["held"] = (local_bytes(dit), local_bytes(whole))
    # a streaming student: chunks of 3 frames (one padded frame on the second rank) against a KV cache of 9
    # frames with 3 sinks, so 4 chunks evict; each chunk's pass keeps its graph, as the rollout's exit step does
    dit = _wan_dit(chunk_frames=3)
    single = copy.deepcopy(dit)
    apply_sequence_parallel(dit, 2)
    caches = [m.new_cache((4, 4), 9, 3) for m in (single, dit)]
    g = torch.Generator().manual_seed(11)
    text = torch.randn(2, 6, 32, generator=g)
    for c in range(4):
        x, t, w = torch.randn(2, 3, 16, 4, 4, generator=g), torch.rand(2, generator=g) * 1000, torch.randn(2, 3, 16, 4, 4, generator=g)
        clean = torch.randn(2, 3, 16, 4, 4, generator=g)
        ys = []
        for m, cache in zip((single, dit), caches):
            y = m(x, t, text, cache=cache)
            (y * w).sum().backward()  # the whole loss on every rank, as DMD computes it
            cache.writing = True
            with torch.no_grad():
                m(clean, torch.zeros(2), text, cache=cache)
            cache.writing = False
            ys.append(y.detach())
        results[("stream", c)] = float((ys[1] - ys[0]).abs().max())
    for (name, a), b in zip(dit.named_parameters(), single.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=f"stream {name}")
    heads = single.transformer.config.num_attention_heads
    mine = slice(rank * heads // 2, (rank + 1) * heads // 2)
    assert caches[1].frame_ids == caches[0].frame_ids == [0, 1, 2, 9, 10, 11]
    for block in range(single.depth):
        torch.testing.assert_close(caches[1].k[block], caches[0].k[block][:, mine], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(caches[1].v[block], caches[0].v[block][:, mine], rtol=1e-5, atol=1e-5)
    results["cache"] = (caches[1].k[0].numel(), caches[0].k[0].numel())
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_sequence_parallel_wan_transformer_equals_one_process(tmp_path):
    """diffusers' Wan2.1 transformer split by frames: outputs and every gradient (weights, latents, text) equal one
    process, bidirectional and block-causal, even and uneven frames, one timestep per sample or per frame, with
    activation checkpointing, on top of a sharded frozen teacher, and streamed chunk by chunk against a KV cache
    sharded by heads (sink frames, evictions, gradients through each chunk's pass)."""
    pytest.importorskip("diffusers")
    mp.spawn(_wan_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    held, whole = results.pop("held")
    assert 0.45 * whole < held < 0.55 * whole
    per_rank, whole = results.pop("cache")
    assert per_rank * 2 == whole  # each rank keeps its heads of the KV cache
    streamed = {("stream", c) for c in range(4)}
    assert set(results) == {*WAN_CASES, ("sharded", False), ("sharded", True), *streamed}
    assert max(results.values()) < 1e-5


def test_grpo_with_parallel_sequence_2_under_accelerate_equals_one_process(tmp_path):
    """Rollouts are sampled whole on both ranks (same seeds, same tokens); the policy's scoring pass is split."""
    import json

    from safetensors.torch import load_file

    args = ["grpo", "--config", "configs/grpo_video_qa.yaml", "train.log_every=1", "train.sample_every=0",
            "train.checkpoint_every=1", "grpo.prompts_per_step=2", "grpo.group_size=3", "grpo.eval_num=4", "eval_num=4",
            "grpo.max_new_tokens=12", "grpo.temperature=2.0", "--quiet"]  # hot sampling: rewards differ, gradients flow
    _one_then_split(tmp_path, args, accelerate_launch(2), steps=2)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "sp" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [json.loads(l) for l in (tmp_path / "sp" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rows if "loss" in r] == [r["reward"] for r in ref if "loss" in r]  # same rollouts
    assert all(r["grad_norm"] > 0.1 for r in ref if "loss" in r)
    for key in ("grad_norm", "loss"):  # AdamW hardly sees a gradient's scale: compare the gradients' norms too
        assert [r[key] for r in rows if "loss" in r] == pytest.approx([r[key] for r in ref if "loss" in r], rel=1e-4), key


def test_dmd_distill_with_parallel_sequence_2_under_accelerate_equals_one_process(tmp_path):
    """The teacher's, the critic's and the student's frames are split (the student's rollout chunk by chunk, with
    a head-sharded KV cache)."""

    from safetensors.torch import load_file

    from genrl.models.registry import save_weights

    from test_distill_runs import TINY
    from tiny import tiny_video_model

    m = tiny_video_model(seed=0)
    teacher = str(save_weights(m, tmp_path / "teacher.safetensors", "video_model", m.cfg))
    _one_then_split(tmp_path, ["distill", f"teacher={teacher}", "method=dmd", *TINY, "eval_num=0"], accelerate_launch(2),
                    steps=2)
    for name in ("student", "critic"):
        a = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "sp" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
    # AdamW hardly sees a gradient's scale, so compare the gradients themselves: their logged norms
    import json

    rows = [json.loads(l) for l in (tmp_path / "sp" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for key in ("grad_norm", "critic_grad_norm", "loss", "critic_loss"):
        assert [r[key] for r in rows if "loss" in r] == pytest.approx([r[key] for r in ref if "loss" in r], rel=1e-4), key


def test_ode_init_with_parallel_sequence_2_under_accelerate_equals_one_process(tmp_path):
    """The student's regression passes (chunk by chunk, a head-sharded KV cache) split over 2 ranks, with the
    teacher-forcing loss on real clips too; one step, a resume to the second, against a plain 2-step run."""
    import json

    from safetensors.torch import load_file

    from genrl.models.registry import save_weights

    from test_distill_runs import TINY
    from tiny import tiny_video_model

    m = tiny_video_model(seed=0)
    teacher = str(save_weights(m, tmp_path / "teacher.safetensors", "video_model", m.cfg))
    _one_then_split(tmp_path, ["distill", f"teacher={teacher}", "method=ode_init", "ode.real_weight=0.5", *TINY,
                               "eval_num=0"], accelerate_launch(2), steps=2)
    for name in ("student", "ema"):
        a = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "sp" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
    rows, ref = ([json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("sp", "one"))
    for key in ("grad_norm", "loss", "ode_loss", "real_loss"):
        assert [r[key] for r in rows if "loss" in r] == pytest.approx([r[key] for r in ref if "loss" in r], rel=1e-4), key


def test_bench_wan_runs_the_streaming_student_against_its_teacher_on_a_tiny_random_transformer(run_cli, tmp_path):
    import json

    code, out, err = run_cli("bench", "wan", "--arch", "tiny", "--frames", "13", "--height", "32", "--width", "32",
                             "--teacher-steps", "4", "--dtype", "float32", "--json", str(tmp_path / "w.json"), "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "w.json").read_text())
    # 4 latent frames = 2 chunks: 4 steps each + one cache refresh = 4.5 passes a frame; the teacher 2 x 4
    assert r["stream.wan.nfe_ratio"] == pytest.approx(8 / 4.5, abs=0.01)
    assert r["stream.wan.student_fps"] > 0 and r["raw"]["latent_frames"] == 4 and len(r["raw"]["student_seconds"]) == 1
    code, _, err = run_cli("bench", "wan", "--arch", "tiny", "--frames", "12")
    assert code == 2 and "4k+1" in err


def test_sft_with_parallel_sequence_2_under_torchrun_equals_one_process(tmp_path):
    """The same code under torchrun (gloo on CPU): the VLM's token sequence split over 2 ranks, stopped and resumed."""
    import sys

    from safetensors.torch import load_file

    args = ["sft", "--config", "configs/sft_video_qa.yaml", "sft.size=debug", "sft.batch_size=4", "sft.eval_num=0",
            "eval_num=0", "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=1",
            "optim.warmup_steps=0", "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "genrl.cli"]
    _one_then_split(tmp_path, args, torchrun, steps=3)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "sp" / "model.safetensors"))
    assert any(k.startswith("blocks.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    import json

    rows = [json.loads(l) for l in (tmp_path / "sp" / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    ref = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref], rel=1e-4), key
