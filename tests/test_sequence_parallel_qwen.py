"""A transformers Qwen2-VL policy with its token sequence (and its vision tower by frames) split over 2 gloo
processes equals one process:
log-probs and every gradient, padded rows and a row without padding, even and uneven lengths, KV heads the ranks share and ones
they must repeat, with activation checkpointing; sampling runs whole; and `genrl grpo` with
``parallel.sequence=2`` under accelerate trains and resumes like one process."""

import json

import pytest
import torch
import torch.multiprocessing as mp

from tiny import accelerate_launch

pytest.importorskip("transformers")
from tiny_qwen import sft_qwen2vl, tiny_qa_qwen2vl  # noqa: E402

CASES = [("kv2", False), ("kv1", False), ("kv2", True)]  # (KV heads over 2 ranks: shared / repeated, checkpointing)


def _worker(rank, init, folders, out):
    import torch.distributed as dist

    from genrl.methods.qa import load_policy, prompts
    from genrl.models.hf_vlm import QwenVLPolicy
    from genrl.parallel import every_rank, make_sequence_parallel
    from genrl.worlds.qa import ShapesQA

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    videos, items = ShapesQA().items("test", range(5))
    results, lengths = {}, []
    # the vision tower alone, split by frames: 8 frames (4 temporal patches, 2 a rank), 6 (3: uneven) and 5 (odd:
    # the last frame repeated, as the tower pads)
    for frames in (8, 6, 5):
        kw = dict(frames=frames, height=videos.shape[-2], width=videos.shape[-1], min_pixels=56 * 56)
        single = QwenVLPolicy.from_pretrained(folders["kv2"], **kw)
        split = make_sequence_parallel(QwenVLPolicy.from_pretrained(folders["kv2"], **kw), 2)
        clips = videos[:2, :frames]
        seen = []  # the temporal patches each call of this rank's tower encodes
        split.visual.register_forward_pre_hook(lambda m, a, kw: seen.append(int(kw["grid_thw"][:, 0].sum())),
                                               with_kwargs=True)
        a = single.encode_video(clips)
        with every_rank():
            b = split.encode_video(clips)
        assert seen == [2 * 2]  # 2 of the (padded) 4 temporal patches of each of the 2 clips: half the tower's work
        w = torch.randn(a.shape, generator=torch.Generator().manual_seed(frames))
        (a * w).sum().backward()
        (b * w).sum().backward()
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for (name, p), q in zip(split.visual.named_parameters(), single.visual.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {frames}")
        results[("vision", frames)] = float((b - a).abs().max())
        if rank == 0:  # outside a training step one process alone encodes whole, waiting on no other
            torch.testing.assert_close(split.encode_video(clips), a, rtol=0, atol=0)
            assert seen[-1] == 2 * -(-frames // 2)
        dist.barrier()
    for kv, checkpointing in CASES:
        single, split = load_policy(folders[kv]), load_policy(folders[kv])
        make_sequence_parallel(split, 2)
        if checkpointing:
            for m in (single, split):
                m.model.gradient_checkpointing_enable()
                m.model.train()
        p_ids, p_mask = prompts(single, items)
        assert len(set(p_mask.sum(1).tolist())) > 1  # left padding in the prompts
        with torch.no_grad():
            emb = single.encode_video(videos)
            ids, mask = single.generate(emb, p_ids, p_mask, 7, 1.5, torch.Generator().manual_seed(0))
            ids_s, mask_s = split.generate(split.encode_video(videos), p_ids, p_mask, 7, 1.5,
                                           torch.Generator().manual_seed(0))
        assert torch.equal(ids_s, ids) and torch.equal(mask_s, mask)  # sampling: whole on every rank, same tokens
        r = int(p_mask.sum(1).argmax())  # the longest prompt: no left padding; its completion cut to its length
        n = int(mask[r].sum())
        whole = (videos, p_ids, p_mask, ids, mask)
        one_row = (videos[r : r + 1], p_ids[r : r + 1], p_mask[r : r + 1], ids[r : r + 1, :n], mask[r : r + 1, :n])
        assert bool(one_row[2].all() and one_row[4].all())  # no padding at all: the kernels' causal mode
        for (vids, pi, pm, ci, cm), extra in ((whole, 0), (whole, 1), (one_row, 0), (one_row, 1)):
            # the completion one token shorter flips the sequence length's parity
            c_ids, c_mask = ci[:, : ci.shape[1] - extra], cm[:, : cm.shape[1] - extra]
            w = torch.randn(c_ids.shape, generator=torch.Generator().manual_seed(extra))
            single.zero_grad()
            split.zero_grad()
            a = single.token_logprobs(single.encode_video(vids), pi, pm, c_ids, c_mask)
            with every_rank():
                b = split.token_logprobs(split.encode_video(vids), pi, pm, c_ids, c_mask)
            (a * w * c_mask).sum().backward()
            (b * w * c_mask).sum().backward()
            torch.testing.assert_close(b[c_mask], a[c_mask], rtol=1e-5, atol=1e-5)
            grads = 0
            for (name, p), q in zip(split.named_parameters(), single.parameters()):  # whole on every rank
                if q.grad is None:
                    continue
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {kv} {checkpointing}")
                grads += 1
            assert grads == sum(1 for q in single.parameters() if q.grad is not None) > 20
            results[(kv, checkpointing, len(pi), extra)] = float((b - a)[c_mask].abs().max())
            full, _, _ = single._sequence(pi, pm, c_ids, c_mask)
            lengths.append(full.shape[1])
    if rank == 0:
        torch.save((results, lengths), out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_sequence_parallel_qwen2vl_policy_equals_one_process(tmp_path):
    folders = {"kv2": str(tiny_qa_qwen2vl(tmp_path / "kv2")), "kv1": str(tiny_qa_qwen2vl(tmp_path / "kv1", kv_heads=1))}
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rdv'}", folders, str(tmp_path / "out.pt")), nprocs=2, join=True)
    results, lengths = torch.load(tmp_path / "out.pt")
    assert len(results) == 4 * len(CASES) + 3 and max(results.values()) < 1e-5
    assert {n % 2 for n in lengths[0::4] + lengths[1::4]} == {n % 2 for n in lengths[2::4] + lengths[3::4]} == {0, 1}


def test_sequence_parallel_qwen2vl_needs_its_processes(tmp_path):
    from genrl.errors import UsageError
    from genrl.methods.qa import load_policy
    from genrl.parallel import make_sequence_parallel

    with pytest.raises(UsageError, match="needs 2 processes"):
        make_sequence_parallel(load_policy(str(tiny_qa_qwen2vl(tmp_path / "m"))), 2)


def test_grpo_on_a_qwen2vl_policy_with_parallel_sequence_2_under_accelerate_equals_one_process(tmp_path):
    """Rollouts sampled whole on both ranks; the policy's and the reference's scoring passes split; 1 step and a
    resume against 2 straight steps in one process, in the exported transformers folder's weights."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    folder = sft_qwen2vl(tmp_path, env)
    args = ["grpo", "--config", "configs/grpo_video_qa.yaml", f"grpo.policy={folder}", "train.log_every=1",
            "train.sample_every=0", "train.checkpoint_every=1", "grpo.prompts_per_step=2", "grpo.group_size=3",
            "grpo.eval_num=0", "eval_num=2", "grpo.max_new_tokens=24", "grpo.temperature=1.5", "optim.lr=1e-2",
            "--quiet"]
    one = subprocess.run([sys.executable, "-m", "genrl.cli", *args, "train.steps=2", f"out_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    for n in (1, 2):
        r = subprocess.run([*accelerate_launch(2), *args, "parallel.sequence=2", f"out_dir={tmp_path / 'sp'}",
                            f"train.steps={n}"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "sp" / "model" / "model.safetensors"))
    start = load_file(str(folder / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a if ".layers." in k)  # the steps trained the language model
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [json.loads(x) for x in (tmp_path / "sp" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["reward"] for r in rows] == [r["reward"] for r in ref]  # the same rollouts
    assert all(r["grad_norm"] > 0 for r in ref)
    for key in ("grad_norm", "loss"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref], rel=1e-4), key
