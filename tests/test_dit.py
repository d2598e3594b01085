import pytest
import torch

from genrl.models.dit import DiTConfig, VideoDiT, apply_rope, rope_angles, token_positions
from genrl.models.video_model import VideoModel, VideoModelConfig
from genrl.models.autoencoder import AutoencoderConfig
from genrl.models.text import TextEncoderConfig

TINY = DiTConfig(dim=48, depth=2, heads=2, text_dim=16, chunk_frames=2)


def _model(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    m = VideoDiT(cfg)
    with torch.no_grad():  # break the zero init so every path matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _inputs(B=2, F=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, 4, 8, 8, generator=g)
    t = torch.rand(B, F, generator=g) * 1000
    text = torch.randn(B, 5, 16, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, t, text, mask


def test_streaming_with_cache_equals_full_block_causal_forward():
    m, (x, t, text, mask) = _model(), _inputs()
    full = m(x, t, text, mask, causal=True)
    cache = m.new_cache((8, 8), local_frames=6)
    cache.writing = True
    outs = [m(x[:, i : i + 2], t[:, i : i + 2], text, mask, cache=cache) for i in range(0, 6, 2)]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_block_causal_outputs_ignore_the_future_and_bidirectional_do_not():
    m, (x, t, text, mask) = _model(), _inputs()
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change only the last chunk
    a, b = m(x, t, text, mask, causal=True), m(x2, t, text, mask, causal=True)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])
    a, b = m(x, t, text, mask), m(x2, t, text, mask)
    assert not torch.allclose(a[:, :4], b[:, :4], atol=1e-4)


def test_rolling_cache_keeps_sink_and_recent_frames_and_is_bounded():
    m, (x, t, text, mask) = _model(), _inputs(F=2)
    cache = m.new_cache((8, 8), local_frames=6, sink_frames=2)
    cache.writing = True
    lengths = []
    for _ in range(8):
        m(torch.randn_like(x), t, text, mask, cache=cache)
        lengths.append(cache.k[0].shape[2])
    assert max(lengths) == (6 - 2) * 16  # local window minus the current chunk, 16 tokens a frame
    assert cache.frame_ids == [0, 1, 14, 15]


def test_rolling_cache_whose_window_is_only_sinks_keeps_only_sinks():
    m, (x, t, text, mask) = _model(), _inputs(F=2)
    cache = m.new_cache((8, 8), local_frames=4, sink_frames=2)  # room for the sinks and the current chunk
    cache.writing = True
    for _ in range(4):
        m(torch.randn_like(x), t, text, mask, cache=cache)
        assert cache.k[0].shape[2] == 2 * 16 and cache.frame_ids == [0, 1]


def test_rolling_cache_position_layout_matches_training():
    # once the window rolls, a chunk sees [sink, recent, itself] at positions 0..local-1,
    # exactly like the last chunk of a training-length video: same output for the same content.
    # (one block, so cached keys/values depend only on their own chunk, not on what it attended to)
    m, (x, t, text, mask) = _model(cfg=DiTConfig(dim=48, depth=1, heads=2, text_dim=16, chunk_frames=2)), _inputs(F=6)
    full = m(x, t, text, mask, causal=True)
    cache = m.new_cache((8, 8), local_frames=6, sink_frames=2)
    cache.writing = True
    m(x[:, 0:2], t[:, 0:2], text, mask, cache=cache)  # sink frames
    m(torch.randn_like(x[:, :2]), t[:, :2], text, mask, cache=cache)  # evicted later
    m(x[:, 2:4], t[:, 2:4], text, mask, cache=cache)
    out = m(x[:, 4:6], t[:, 4:6], text, mask, cache=cache)
    assert torch.allclose(out, full[:, 4:6], atol=1e-5)


def test_rope_is_relative():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 24, generator=g), torch.randn(1, 1, 1, 24, generator=g)
    def score(pq, pk):
        aq = rope_angles(torch.tensor([pq]), 24, 10000.0)
        ak = rope_angles(torch.tensor([pk]), 24, 10000.0)
        return (apply_rope(q, aq) * apply_rope(k, ak)).sum()
    assert torch.allclose(score([3, 1, 2], [1, 0, 0]), score([5, 4, 4], [3, 3, 2]), atol=1e-5)
    assert token_positions(2, 2, 2).tolist()[5] == [1, 0, 1]


def test_video_model_sample_is_seeded_and_cfg_changes_it():
    cfg = VideoModelConfig(dit=DiTConfig(dim=48, depth=1, heads=2, text_dim=16), text=TextEncoderConfig(dim=16, layers=1, heads=2),
                           autoencoder=AutoencoderConfig(width=8))
    torch.manual_seed(0)
    m = VideoModel(cfg).eval()
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    p = ["a small red square moving left slowly on a dark background"]
    a = m.sample(p, 3, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(5))
    b = m.sample(p, 3, steps=3, guidance=3.0, generator=torch.Generator().manual_seed(5))
    c = m.sample(p, 3, steps=3, guidance=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # CFG is exactly v_u + w (v_c - v_u) on the model's own predictions
    x = torch.randn(1, 3, 4, 8, 8)
    s = torch.tensor([0.5])
    text, null = m.encode_text(p), m.encode_text([""])
    v = m.velocity(x, s, text, null, guidance=3.0)
    vc, vu = m.velocity(x, s, text), m.velocity(x, s, null)
    assert torch.allclose(v, vu + 3.0 * (vc - vu), atol=1e-5)


@pytest.mark.parametrize("n,block,padded", [(12, 4, 0), (10, 4, 0), (12, 4, 3), (9, 3, 2)])
def test_block_causal_attention_equals_the_dense_masked_one_without_building_the_mask(n, block, padded):
    from genrl.attention import BlockCausal, attention

    g = torch.Generator().manual_seed(n + block + padded)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, requires_grad=True) for _ in range(3))
    keys = (torch.arange(n) < n - padded) if padded else None
    pattern = BlockCausal(block, keys)
    w = torch.randn(2, 3, n, 8, generator=g)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pattern.dense(n))
    grads = torch.autograd.grad((dense * w).sum(), (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = attention(q, k, v, pattern)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (n, n) not in saved and max(s[-1] * s[-2] for s in saved if len(s) >= 2) <= n * 8
    # the pattern by hand: token 5 of blocks of 4 sees 0..7 (its own block), not 8 on
    d = BlockCausal(4).dense(12)
    assert d[5].tolist() == [True] * 8 + [False] * 4 and d[3].tolist() == [True] * 4 + [False] * 8
