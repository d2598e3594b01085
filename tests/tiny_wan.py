"""A tiny random Wan2.1 pipeline saved like a real diffusers folder (no download), as diffusers' Wan tests build it."""

import torch

WORDS = ["a", "small", "large", "red", "green", "blue", "yellow", "square", "circle", "triangle", "moving", "left",
         "right", "up", "down", "slowly", "quickly", "on", "dark", "light", "background", "cat", "walking"]


def tiny_umt5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def tiny_wan_components(seed=0, scheduler="euler"):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    tok = tiny_umt5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0)).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=64)
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make outputs clearly non-trivial
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return dict(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder, tokenizer=tok, scheduler=sched)


def tiny_wan_folder(folder, seed=0, scheduler="euler"):
    """Write a tiny random WanPipeline to ``folder`` with ``save_pretrained``; returns the pipeline."""
    from diffusers import WanPipeline

    pipe = WanPipeline(**tiny_wan_components(seed, scheduler))
    pipe.save_pretrained(str(folder))
    return pipe
