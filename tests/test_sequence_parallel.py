"""Ulysses sequence parallelism on 2 gloo processes equals one process: attention, a whole DiT forward and
backward, bidirectional and block-causal, frame counts the ranks divide and ones they do not."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from genrl.errors import UsageError

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
    dist.destroy_process_group()


def test_two_rank_ulysses_equals_one_process_for_attention_and_a_whole_dit(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    assert set(results) == set(CASES) and max(results.values()) < 1e-5


def test_sequence_parallel_needs_its_processes_and_divisible_heads():
    from genrl.parallel import apply_sequence_parallel

    class M(torch.nn.Module):
        pass

    with pytest.raises(UsageError, match="needs 2 processes"):
        apply_sequence_parallel(M(), 2)
