"""A tiny random VideoReward written in VideoAlign's release layout (no download).

The "trained" model is built first (a tiny Qwen2-VL with the three reward tokens and
a reward head); the release is then written from it the way PEFT saves a LoRA-wrapped
model: the wrapper prefix, transformers' older key layout, LoRA pairs beside base
weights chosen so that W = base + s B A holds exactly, modules_to_save copies. So the
trained model itself is the reference a correct loader must give back.
"""

import json

import torch

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE = "Rate the video.\nQuality: <|VQ_reward|>\nMotion: <|MQ_reward|>\nPrompt '{text_prompt}': <|TA_reward|>\n"
STATS = {"VQ_mean": 0.5, "VQ_std": 2.0, "MQ_mean": -0.25, "MQ_std": 0.5, "TA_mean": 1.0, "TA_std": 4.0}
LORA_R, LORA_ALPHA = 4, 8
TARGETS = ("q_proj", "v_proj", "qkv", "embed_tokens")


def base_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>",
                "<|endoftext|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;'\"()!?-\n{}_*":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": specials[:6]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(vocab: int, ids: dict):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def write_release(root, output_dim=3, layout="model_pth", seed=0):
    """Writes root/base (the Qwen2-VL base) and root/release; returns (trained model, head, tokenizer)."""
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    tok = base_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"]}
    torch.manual_seed(seed)
    base = Qwen2VLForConditionalGeneration(_config(len(tok), ids)).eval()
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    # the trained model: reward tokens added, every weight moved, a reward head
    tok.add_special_tokens({"additional_special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]})
    trained = Qwen2VLForConditionalGeneration(_config(len(tok), ids)).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_(0, 0.2)
    head = torch.nn.Linear(32, output_dim, bias=False)
    torch.nn.init.normal_(head.weight)
    state = _release_state(trained, head, layout == "model_pth")
    ckpt = root / "release" / "checkpoint-12"
    ckpt.mkdir(parents=True)
    if layout == "model_pth":
        torch.save(state, ckpt / "model.pth")
    else:  # PEFT's adapter file (no adapter names) + the trained tensors that are not LoRA
        from safetensors.torch import save_file

        lora = {k.replace(".default", ""): v for k, v in state.items() if ".lora_" in k}
        save_file(lora, str(ckpt / "adapter_model.safetensors"))
        torch.save({k: v for k, v in state.items() if ".lora_" not in k}, ckpt / "non_lora_state_dict.pth")
    (root / "release" / "model_config.json").write_text(json.dumps({
        "data_config": {"fps": 2.0, "max_frame_pixels": 448 * 448, "num_frames": None, "sample_type": "uniform",
                        "prompt_template_type": "detailed_special", "eval_dim": ["VQ", "MQ", "TA"]},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": output_dim,
                         "use_special_tokens": True, "reward_token": "special"},
        "peft_lora_config": {"lora_enable": True, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "use_rslora": False,
                             "lora_modules_to_save": ["rm_head"]},
        "inference_config": STATS,
    }, indent=2))
    (root / "template.txt").write_text(TEMPLATE)
    return trained, head, tok


def _old_key(key: str) -> str:
    """transformers' older Qwen2-VL layout: visual.*, model.* (language), lm_head."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def _release_state(trained, head, complete: bool) -> dict:
    g = torch.Generator().manual_seed(7)
    s = LORA_ALPHA / LORA_R
    out = {}
    for key, w in trained.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embedding
        old = _old_key(key)
        module = old[: -len(".weight")] if old.endswith(".weight") else None
        if module and any(module.endswith(t) for t in TARGETS) and w.ndim == 2:
            prefix = "base_model.model." + module
            if module.endswith("embed_tokens"):  # embedding LoRA: A (r, num), B (dim, r)
                a, b = torch.randn(LORA_R, w.shape[0], generator=g), torch.randn(w.shape[1], LORA_R, generator=g)
                delta = s * (b @ a).T
                out[f"{prefix}.lora_embedding_A.default"], out[f"{prefix}.lora_embedding_B.default"] = a, b
            else:
                a, b = torch.randn(LORA_R, w.shape[1], generator=g), torch.randn(w.shape[0], LORA_R, generator=g)
                delta = s * (b @ a)
                out[f"{prefix}.lora_A.default.weight"], out[f"{prefix}.lora_B.default.weight"] = a, b
            out[f"{prefix}.base_layer.weight"] = w - delta
        else:
            name = old.rsplit(".", 1)
            base_key = f"base_model.model.{name[0]}.base_layer.{name[1]}" if module and any(module.endswith(t) for t in TARGETS) else f"base_model.model.{old}"
            out[base_key] = w.clone()
    out["base_model.model.rm_head.original_module.weight"] = torch.zeros_like(head.weight)
    out["base_model.model.rm_head.modules_to_save.default.weight"] = head.weight.detach().clone()
    return out
