"""A tiny random Qwen2-VL with a tokenizer built in memory (no download), as transformers tests do."""

import torch

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>",
            "<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>", "<unk>", "<pad>"]


def tiny_tokenizer(words=()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    base = "abcdefghijklmnopqrstuvwxyz0123456789.,:;'()!?-\n{}_"
    for w in [*base, *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # character level
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[:9]})
    return fast


def tiny_qwen2vl(seed=0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg).eval(), tok


def tiny_qa_qwen2vl(folder, seed=0, kv_heads=2):
    """A tiny random Qwen2-VL saved to ``folder`` with a word-level tokenizer over the shapes QA vocabulary
    (plus the answer tags), so `from_pretrained` loads it like a real local checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from genrl.worlds.qa import vocabulary

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>",
                "<|endoftext|>", "<unk>"]
    words = [*vocabulary(), "<think>", "</think>", "<answer>", "</answer>", "system", "user", "assistant"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": specials[:6]})
    ids = {t: fast.convert_tokens_to_ids(t) for t in specials}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def sft_qwen2vl(tmp_path, env):
    """A tiny Qwen2-VL after a 60-step SFT (a random one never writes the tagged format, so every GRPO reward
    would be 0); returns its transformers folder."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "genrl.cli", "sft", "--config", "configs/sft_video_qa.yaml",
                        f"sft.init={tiny_qa_qwen2vl(tmp_path / 'random')}", f"out_dir={tmp_path / 'sft'}",
                        "train.steps=60", "sft.batch_size=8", "sft.eval_num=0", "eval_num=0", "optim.lr=5e-3",
                        "optim.warmup_steps=5", "train.sample_every=100", "--quiet"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp_path / "sft" / "model"
