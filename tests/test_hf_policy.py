"""A transformers Qwen2-VL as the GRPO policy: the cached-embedding pass equals the library's own
pixel pass, KV-cached sampling agrees with teacher forcing, and `genrl grpo` trains, resumes and
exports it (a tiny random model saved to a local folder; nothing is downloaded)."""

import json

import pytest
import torch

from genrl.methods.common import OptimConfig
from genrl.methods.grpo import GRPOMethodConfig, build_grpo
from genrl.methods.qa import load_policy, prompts
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.qa import ShapesQA

pytest.importorskip("transformers")
from tiny import OneProcess  # noqa: E402
from tiny_qwen import tiny_qa_qwen2vl  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_qa_qwen2vl(tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module")
def batch(folder):
    policy = load_policy(str(folder))
    videos, items = ShapesQA().items("test", range(5))
    p_ids, p_mask = prompts(policy, items)
    return policy, videos, p_ids, p_mask


def test_cached_embeddings_equal_the_library_pixel_pass(batch):
    policy, videos, p_ids, p_mask = batch
    assert len(set(p_mask.sum(1).tolist())) > 1  # rows of different lengths: left padding is exercised
    assert policy.video_tokens == 16  # 8 frames at 56x56: a (4, 4, 4) patch grid, 2x2 merged
    emb = policy.encode_video(videos)
    gen = torch.Generator().manual_seed(0)
    ids, mask = policy.generate(emb, p_ids, p_mask, 6, temperature=1.0, generator=gen)
    ours = policy.token_logprobs(emb, p_ids, p_mask, ids, mask)
    # the library's path: token ids + pixel values, positions from its own M-RoPE code
    full, fmask, video = policy._sequence(p_ids, p_mask, ids, mask)
    px, grid = policy.pixels(videos)
    out = policy.model(input_ids=full, attention_mask=fmask.long(), pixel_values_videos=px, video_grid_thw=grid,
                       mm_token_type_ids=video.int() * 2)
    lib = out.logits[:, -ids.shape[1] - 1 : -1].float().log_softmax(-1).gather(2, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(ours[mask], lib[mask], rtol=0, atol=1e-5)


def test_kv_cached_greedy_decoding_matches_teacher_forcing(batch):
    policy, videos, p_ids, p_mask = batch
    emb = policy.encode_video(videos)
    ids, mask = policy.generate(emb, p_ids, p_mask, 8, temperature=0)
    _, logits = policy.token_logprobs(emb, p_ids, p_mask, ids, mask, return_logits=True)
    assert torch.equal(logits.argmax(-1)[mask], ids[mask])  # every kept token is the full pass's argmax
    ended = (ids == policy.tokenizer.eos_id) & mask
    assert torch.equal(mask.sum(1)[ended.any(1)], ended.float().argmax(1)[ended.any(1)] + 1)  # stops at <|im_end|>
    a = policy.generate(emb, p_ids, p_mask, 8, 1.0, torch.Generator().manual_seed(3))
    b = policy.generate(emb, p_ids, p_mask, 8, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])  # seeded sampling repeats


def test_a_grpo_step_trains_the_language_model_only(folder):
    cfg = GRPOMethodConfig(policy=str(folder), prompts_per_step=2, group_size=4, eval_num=0, temperature=1.5)
    m = build_grpo(cfg, OptimConfig(lr=1e-2, warmup_steps=1), 0)
    m.accuracy_reward = lambda item, text: float(len(text.split()) % 2)  # a random policy earns no task reward
    before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    for step in range(1, 3):
        out = m.train_step(step, StepContext(OneProcess(), TrainConfig()))
    assert out["grad_norm"] > 0 and m.vision_rows == 2 * 2  # the tower ran once per question per step
    after = m.policy.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(".language_model." in k for k in changed) and not any(".visual." in k for k in changed)
    assert all(torch.equal(before[k], v) for k, v in m.ref.state_dict().items())


def test_sft_then_grpo_cli_train_resume_exactly_and_export_transformers_folders(folder, tmp_path, run_cli):
    sft = tmp_path / "sft"
    code, _, err = run_cli("sft", "--config", "configs/sft_video_qa.yaml", f"sft.init={folder}", f"out_dir={sft}",
                           "train.steps=60", "sft.batch_size=8", "sft.eval_num=0", "eval_num=8", "optim.lr=5e-3",
                           "optim.warmup_steps=5", "train.sample_every=100", "-q")
    assert code == 0, err
    assert (sft / "model" / "config.json").exists()  # a transformers folder, loadable by from_pretrained
    assert json.loads((sft / "eval.json").read_text())["format"] > 0.5  # answers in the tagged format now

    base = ["grpo", "--config", "configs/grpo_video_qa.yaml", f"grpo.policy={sft}", "grpo.prompts_per_step=4",
            "grpo.group_size=4", "grpo.eval_num=4", "eval_num=4", "train.sample_every=100", "-q"]
    straight, split = tmp_path / "g1", tmp_path / "g2"
    assert run_cli(*base, f"out_dir={straight}", "train.steps=2")[0] == 0
    assert run_cli(*base, f"out_dir={split}", "train.steps=1")[0] == 0
    code, _, err = run_cli(*base, f"out_dir={split}", "train.steps=2")
    assert code == 0, err
    start, a, b = (load_policy(str(p)).state_dict() for p in (sft, straight, split / "model"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # 2 steps straight == 1 + resume + 1
    changed = [k for k in a if not torch.equal(a[k], start[k])]
    assert changed and not any(".visual." in k for k in changed)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("grad_norm", 0) > 0 for r in rows)
    code, out, _ = run_cli("eval", "--task", "qa", "--checkpoint", str(straight), "--num", "4", "-q")
    assert code == 0 and "on 4 test questions: accuracy=" in out


def test_activation_checkpointing_gives_the_same_gradients_keeping_less_and_sampling_keeps_its_cache(folder):
    from genrl.memory import saved_bytes
    from genrl.train.trainer import Role, place_roles

    videos, items = ShapesQA().items("test", range(4))
    plain, ckpt = load_policy(str(folder)).train(), load_policy(str(folder)).train()
    place_roles({"policy": Role(ckpt, trainable=True)}, torch.device("cpu"), TrainConfig(activation_checkpointing=True))
    assert ckpt.checkpointing and not plain.checkpointing
    p_ids, p_mask = prompts(plain, items)
    with torch.no_grad():  # cached embeddings, as GRPO's default
        emb = plain.encode_video(videos)
    ids, mask = plain.generate(emb, p_ids, p_mask, 8, temperature=0)
    # in training mode, checkpointed: the KV cache still serves sampling (transformers 4.x would drop it)
    assert torch.equal(ckpt.generate(emb, p_ids, p_mask, 8, temperature=0)[0], ids) and ckpt.model.training
    kept, losses = {}, {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):  # what the forward keeps; backward outside the hooks
        kept[name] = saved_bytes(lambda m=m, name=name: losses.update({name: m.token_logprobs(emb, p_ids, p_mask, ids, mask)[mask].sum()}))
        losses[name].backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert len(grads) > 10 and all(ckpt.get_parameter(n).grad is not None for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(ckpt.get_parameter(n).grad, g, rtol=1e-5, atol=1e-6)
    assert kept["ckpt"] < 0.5 * kept["plain"], kept


def test_sampling_runs_the_lm_head_on_the_last_position_only(batch):
    policy, videos, p_ids, p_mask = batch
    emb = policy.encode_video(videos)
    rows = []
    hook = policy.model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: rows.append(i[0].numel() // i[0].shape[-1]))  # positions the head ran on
    try:
        ids, _ = policy.generate(emb, p_ids, p_mask, 4, temperature=0)
    finally:
        hook.remove()
    assert rows and all(r == p_ids.shape[0] for r in rows), rows  # one a row, also on the prompt pass (not L a row)
