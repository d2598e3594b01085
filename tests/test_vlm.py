"""The tiny VLM: padding invariance, KV-cached decoding vs a full forward, cached video embeddings."""

import dataclasses

import torch

from genrl.methods.qa import build_vlm, prompts, target_text, targets
from genrl.models.vlm import EOS, PAD, TinyVLM
from genrl.worlds.qa import ShapesQA


def _model(seed=0):
    torch.manual_seed(seed)
    qa = ShapesQA()
    return build_vlm("debug", qa).eval(), qa


def test_rows_do_not_depend_on_their_batch():
    model, qa = _model()
    videos, items = qa.items("train", range(8))
    assert len({len(it.prompt().split()) for it in items}) > 1  # prompts of different lengths: left padding happens
    p_ids, p_mask = prompts(model, items)
    t_ids, t_mask = targets(model, items)
    with torch.no_grad():
        emb = model.encode_video(videos)
        batch = model.token_logprobs(emb, p_ids, p_mask, t_ids, t_mask)
        for i in range(8):
            pad = int((~p_mask[i]).sum())
            n = int(t_mask[i].sum())
            one = model.token_logprobs(emb[i : i + 1], p_ids[i : i + 1, pad:], p_mask[i : i + 1, pad:],
                                       t_ids[i : i + 1, :n], t_mask[i : i + 1, :n])
            torch.testing.assert_close(batch[i, :n], one[0], rtol=0, atol=1e-5)


def test_targets_end_in_eos_and_decode_back():
    model, qa = _model()
    _, items = qa.items("val", range(4))
    ids, mask = targets(model, items)
    for it, row, m in zip(items, ids, mask):
        n = int(m.sum())
        assert row[n - 1] == EOS and bool((row[n:] == PAD).all())
        assert model.tokenizer.decode(row) == target_text(it)


def test_kv_cached_sampling_matches_the_full_forward():
    """Log-probs of sampled tokens recomputed by one teacher-forced pass equal the sampler's own:
    greedy decoding with the cache picks exactly the argmax of the full forward at every step."""
    model, qa = _model(1)
    videos, items = qa.items("train", range(6))
    p_ids, p_mask = prompts(model, items)
    with torch.no_grad():
        emb = model.encode_video(videos)
        ids, mask = model.generate(emb, p_ids, p_mask, max_new_tokens=6, temperature=0)
        logits = model.logits(emb, p_ids, p_mask, ids, mask)
    assert ids.shape == (6, 6)
    assert torch.equal(logits.argmax(-1)[mask], ids[mask])
    # and the step-by-step cached logits equal the full pass (compare the first two steps directly)
    with torch.no_grad():
        caches = [{} for _ in model.blocks]
        V = emb.shape[1]
        x = model._embed_prefix(emb, p_ids)
        real = torch.cat((torch.ones(6, V + 2, dtype=torch.bool), p_mask), 1)
        first = model._forward(x, real, caches)[:, -1]
        second = model._forward(model.embed(ids[:, :1]), torch.ones(6, 1, dtype=torch.bool), caches, real)[:, -1]
    torch.testing.assert_close(first, logits[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, logits[:, 1], rtol=1e-4, atol=1e-5)


def test_sampling_is_reproducible_and_stops_at_eos():
    model, qa = _model(2)
    videos, items = qa.items("train", range(4))
    p_ids, p_mask = prompts(model, items)
    emb = model.encode_video(videos)
    a = model.generate(emb, p_ids, p_mask, 8, 1.0, torch.Generator().manual_seed(3))
    b = model.generate(emb, p_ids, p_mask, 8, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for row, m in zip(*a):
        n = int(m.sum())
        assert (row[: n - 1] != EOS).all() and bool((row[n:] == PAD).all())
        assert n == len(row) or row[n - 1] == EOS


def test_video_token_layout():
    model, qa = _model()
    c = model.cfg
    assert model.video_tokens == (c.frames // c.temporal_patch) * (c.height // c.patch // c.merge) * (c.width // c.patch // c.merge)
    videos, _ = qa.items("train", range(2))
    assert model.encode_video(videos).shape == (2, model.video_tokens, c.dim)
    stem = TinyVLM(dataclasses.replace(c, stem_channels=4))  # the conv stem keeps the token layout, and it is
    assert stem.encode_video(videos).shape == (2, model.video_tokens, c.dim)  # circular: a clip shifted around
    shifted = stem.visual.stem(torch.roll(videos, (4, 4), (-2, -1)).transpose(1, 2) * 2 - 1)  # the torus shifts
    torch.testing.assert_close(shifted, torch.roll(stem.visual.stem(videos.transpose(1, 2) * 2 - 1), (4, 4), (-2, -1)))
    # M-RoPE: text positions continue after the largest video position; pads do not advance them
    real = torch.tensor([[True] * (model.video_tokens + 2) + [False, True, True]])
    pos = model._positions(real)
    assert pos[0, 0].tolist() == [0, 0, 0]
    assert pos[0, -1].tolist() == [model.text_start + 2] * 3 and pos[0, -2].tolist() == [model.text_start + 1] * 3


def test_sft_loss_adds_the_attribute_heads_only_for_single_shape_clips():
    from genrl.methods.common import OptimConfig
    from genrl.methods.sft import DESCRIBED, SFTMethod, SFTMethodConfig
    from genrl.worlds.shapes import VALUES

    torch.manual_seed(0)
    m = SFTMethod(SFTMethodConfig(size="debug", vision_aux_weight=0.5), OptimConfig(), 0)
    videos, items = m.qa.items("train", range(12))
    assert any(it.qtype == "count" for it in items) and any(it.qtype != "count" for it in items)
    with torch.no_grad():
        total = m.loss(videos, items)
        m.cfg.vision_aux_weight = 0.0
        lm = m.loss(videos, items)
        emb = m.model.encode_video(videos)
        aux = m.attribute_loss(emb, items)
        # by hand: the heads' cross-entropy per described attribute over the single-shape clips
        rows = [i for i, it in enumerate(items) if it.qtype != "count"]
        logits = m.aux(torch.cat((emb[rows].mean(1), emb[rows].amax(1)), -1)).split([len(VALUES[a]) for a in DESCRIBED], -1)
        want = sum(torch.nn.functional.cross_entropy(lg, torch.tensor([VALUES[a].index(items[i].reason.split()[k]) for i in rows]))
                   for k, (a, lg) in enumerate(zip(DESCRIBED, logits))) / len(DESCRIBED)
    torch.testing.assert_close(total, lm + 0.5 * aux)
    torch.testing.assert_close(aux, want)
