"""Frozen DiTs sharded over 2 gloo processes (train.shard_frozen, FSDP2) give exactly the whole model's outputs
while each process holds half of their weights; a 2-process DMD run with a sharded teacher equals one without,
data parallel or sequence parallel."""

import json

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from genrl.models.registry import save_weights

from test_distributed import _launch
from tiny import tiny_video_model


def _gather_bytes(sharded, whole):
    """(bytes each process holds, bytes of the whole DiT)."""
    import torch.distributed as dist

    from genrl.parallel import local_bytes

    held = [None, None]
    dist.all_gather_object(held, local_bytes(sharded))
    return held, local_bytes(whole)


def _worker(rank, init, out):
    import copy

    import torch.distributed as dist

    from genrl.parallel import shard_frozen

    from tiny_wan import tiny_wan_components

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = {}
    g = torch.Generator().manual_seed(1)
    # the shapes teacher's DiT: bidirectional, block-causal, with a KV cache, and its forward_frames
    model = tiny_video_model(seed=0, depth=2)
    for p in model.dit.parameters():  # the zero-initialised head and modulation would hide mistakes
        torch.nn.init.normal_(p, std=0.2, generator=g)
    whole = copy.deepcopy(model.dit).requires_grad_(False)
    dit = shard_frozen(model.dit.requires_grad_(False))
    x = torch.randn(2, 6, *model.latent_shape(1, 1)[2:], generator=g)
    t = torch.rand(2, generator=g) * 1000
    text, mask = model.encode_text(["a red square moving left", "a blue circle"])
    with torch.no_grad():
        for causal in (False, True):
            results[f"shapes causal={causal}"] = float((dit(x, t, text, mask, causal=causal)
                                                       - whole(x, t, text, mask, causal=causal)).abs().max())
        results["shapes forward_frames"] = float((dit.forward_frames(x, t, text, mask, causal=True)
                                                  - whole.forward_frames(x, t, text, mask, causal=True)).abs().max())
        caches = [m.new_cache(model.latent_hw, 6, 3) for m in (dit, whole)]
        for lo in range(0, 6, 3):
            a, b = (m(x[:, lo:lo + 3], t, text, mask, cache=c) for m, c in zip((dit, whole), caches))
            results[f"shapes cached chunk {lo}"] = float((a - b).abs().max())
    results["shapes bytes"] = _gather_bytes(dit, whole)
    # a Wan2.1 transformer (diffusers), as genrl drives it
    from genrl.models.wan import WanDiT, WanDiTConfig

    torch.manual_seed(0)
    transformer = tiny_wan_components()["transformer"].requires_grad_(False)
    whole = WanDiT(copy.deepcopy(transformer), WanDiTConfig())
    dit = shard_frozen(WanDiT(transformer, WanDiTConfig()))
    x = torch.randn(1, 3, 16, 4, 4, generator=g)
    text = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        results["wan"] = float((dit(x, torch.tensor([700.0]), text) - whole(x, torch.tensor([700.0]), text)).abs().max())
    results["wan bytes"] = _gather_bytes(dit, whole)
    if rank == 0:
        torch.save(results, out)
    del dit, whole, model
    dist.barrier()
    dist.destroy_process_group()


def test_sharded_frozen_dits_equal_the_whole_ones_and_hold_half_the_weights(tmp_path):
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdv'}", str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    for kind in ("shapes", "wan"):
        held, whole = results.pop(f"{kind} bytes")  # every weight on one process only (rows split unevenly
        assert sum(held) == whole and max(held) < 0.8 * whole, (kind, held, whole)  # when a tensor has few)
    assert len(results) == 6 and all(v == 0.0 for v in results.values()), results


@pytest.mark.parametrize("extra", [[], ["parallel.sequence=2"]], ids=["data-parallel", "sequence-parallel"])
def test_two_process_dmd_with_a_sharded_teacher_equals_the_unsharded_run(tmp_path, extra):
    m = tiny_video_model(seed=0)
    teacher = str(save_weights(m, tmp_path / "teacher.safetensors", "video_model", m.cfg))
    _launch(2, tmp_path / "whole", teacher, *extra)
    r = _launch(2, tmp_path / "sharded", teacher, *extra, "train.shard_frozen=true", quiet=False)
    assert "train.shard_frozen: teacher" in r.stderr
    rows = {name: [{k: v for k, v in json.loads(line).items() if k != "time"}
                   for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("whole", "sharded")}
    assert rows["whole"] == rows["sharded"] and any("loss" in r for r in rows["whole"])
    for role in ("student", "critic", "ema"):
        a, b = (load_file(str(tmp_path / name / "checkpoints" / "step_0000002" / f"{role}.safetensors"))
                for name in ("whole", "sharded"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role


def test_shard_frozen_refuses_offload_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("distill", "--config", "configs/dmd.yaml", f"out_dir={tmp_path / 'a'}",
                           "train.shard_frozen=true", "train.offload_frozen=true", "--quiet")
    assert code == 2 and "train.shard_frozen and train.offload_frozen" in err and err.count("\n") == 1


def test_bench_shard_reports_half_the_weights_and_the_same_outputs(run_cli, tmp_path):
    code, out, err = run_cli("bench", "shard", "--frames", "4", "--rounds", "1", "--dim", "32", "--depth", "2",
                             "--heads", "2", "--side", "4", "--json", str(tmp_path / "s.json"), "--quiet")
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    w = r["raw"]["weight_bytes"]
    assert r["shard.weight_ratio"] == round(w["sharded"] / w["whole"], 3) and 0.45 <= r["shard.weight_ratio"] <= 0.6
    assert r["shard.max_abs_diff"] == 0.0 and len(r["raw"]["seconds"]["sharded"]) == 1 and r["shard.time_ratio"] > 0
    assert "sharded / whole: weights" in out
