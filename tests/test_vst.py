"""VST (thinking while watching): the causal vision tower, the stream layout and the streaming evaluation."""

import pytest
import torch

from genrl.methods.qa import build_vlm
from genrl.methods.vst import (STREAM_TYPES, Stream, answer_text, draw_asks, evaluate_stream, first_chunk, seen_item,
                               stream_batch, thought_text, vocabulary_words)
from genrl.models.vlm import VEND, VSTART
from genrl.worlds.qa import QAConfig, QAItem, ShapesQA


@pytest.fixture(scope="module")
def qa():
    return ShapesQA(QAConfig(types=list(STREAM_TYPES)))


def _model(qa, size="debug", causal=True, seed=0):
    torch.manual_seed(seed)
    m = build_vlm(size, qa)
    m.cfg.causal_time = causal
    m.add_words(vocabulary_words())
    return m.eval()


@pytest.mark.parametrize("size", ["debug", "shapes"])  # "shapes" has the conv stem
def test_causal_tower_prefix_and_chunks_equal_the_whole_clip(qa, size):
    m = _model(qa, size)
    v, _ = qa.items("val", range(3))
    with torch.no_grad():
        full = m.encode_video(v)
        for frames in (2, 4, 6):  # the first frames encode to the first tokens
            pre = m.encode_video(v[:, :frames])
            assert torch.allclose(pre, full[:, : pre.shape[1]], atol=1e-6)
        for chunk in (2, 4):  # a stream, chunk by chunk with the tower's cache
            cache = {}
            parts = torch.cat([m.visual(v[:, i : i + chunk], cache) for i in range(0, 8, chunk)], 1)
            assert torch.allclose(parts, full, atol=1e-5)
    m.cfg.causal_time = False  # the whole-clip tower: early tokens see later frames
    with torch.no_grad():
        assert not torch.allclose(m.encode_video(v)[:, :16], m.encode_video(v[:, :2]), atol=1e-5)
        with pytest.raises(ValueError, match="causal in time"):
            m.visual(v[:, :2], {})


def test_stream_equals_teacher_forced_layout(qa):
    """The incremental stream (vision and language caches) gives the training layout's logits position for position."""
    m = _model(qa, "shapes")
    v, items = qa.items("val", range(6))
    asks = [max(a, first_chunk(it, 2)) for a, it in zip([4, 3, 2, 4, 1, 2], items)]
    tok = m.tokenizer
    with torch.no_grad():
        x, real, pos, tgt = stream_batch(m, m.encode_video(v), items, asks, 2)
        full = m._forward(x, real, positions=pos)
        for i, it in enumerate(items):
            s, outs = Stream(m, 1), []
            for c in range(asks[i]):
                outs.append(s.add_video(v[i : i + 1, 2 * c : 2 * c + 2])[:, None])
                outs.append(s.add_text(torch.tensor([tok.encode(thought_text(it, 2 * c, 2 * c + 1))])))
            asked = seen_item(it, 2 * asks[i])
            outs.append(s.add_text(torch.tensor([tok.encode(asked.prompt())])))
            outs.append(s.add_text(torch.tensor([tok.encode(answer_text(asked)) + [tok.eos_id]])))
            streamed = torch.cat(outs, 1)[0]
            n = int(real[i].sum())
            # the stream returns logits for every text token and <vision_end>, not for <vision_start> or chunks
            vs = (x[i, :n] - m.embed.weight[VSTART]).abs().sum(-1) == 0
            ve = (x[i, :n] - m.embed.weight[VEND]).abs().sum(-1) == 0
            inside = torch.zeros(n, dtype=torch.bool)
            open_ = False
            for j in range(n):
                if vs[j]:
                    open_ = True
                elif ve[j]:
                    open_ = False
                inside[j] = open_
            text = ~inside
            assert streamed.shape[0] == int(text.sum())
            assert torch.allclose(streamed, full[i, :n][text], atol=1e-4), (it.qtype, asks[i])
            assert int((tgt[i] >= 0).sum()) == len(tok.encode(answer_text(asked))) + 1 + sum(
                len(tok.encode(thought_text(it, 2 * c, 2 * c + 1))) for c in range(asks[i]))


def test_fork_leaves_the_stream_as_it_was(qa):
    m = _model(qa, "shapes")
    v, items = qa.items("test", range(2))
    ids, mask = m.tokenizer.batch([it.prompt() for it in items], left_pad=True)
    with torch.no_grad():
        a, b = Stream(m, 2), Stream(m, 2)
        a.add_video(v[:, :2]), b.add_video(v[:, :2])
        branch = a.fork()
        branch.add_text(ids, mask)  # a question asked now ...
        branch.add_video(v[:, 2:4])
        la, lb = a.add_video(v[:, 2:4]), b.add_video(v[:, 2:4])  # ... leaves the stream going on unchanged
    assert torch.equal(la, lb) and a.real.shape == b.real.shape and torch.equal(a.next, b.next)


def test_thoughts_answers_and_asks_by_hand():
    item = QAItem("when", "when is the red circle on screen ?", [], "3 6", "3 6", "small red circle left slowly", (3, 6),
                  [(0, 7, "blue square"), (3, 6, "small red circle left slowly")],
                  [(0, 7, "large blue square up quickly"), (3, 6, "small red circle left slowly")])
    assert thought_text(item, 0, 1) == "<think> <time> 0 1 </time> <caption> large blue square up quickly </caption> </think>"
    assert thought_text(item, 2, 3) == ("<think> <time> 2 3 </time> <caption> large blue square up quickly </caption> "
                                        "<time> 3 3 </time> <caption> small red circle left slowly </caption> </think>")
    assert thought_text(item, 2, 3, thoughts=False) == "<think> </think>"
    assert first_chunk(item, 2) == 2 and first_chunk(item, 4) == 1
    assert seen_item(item, 4).answer == "3 3" and seen_item(item, 6).answer == "3 5" and seen_item(item, 8).answer == "3 6"
    assert answer_text(seen_item(item, 4)) == "<answer> 3 3 </answer>"
    colour = QAItem("colour", "what colour is the shape ?", ["red", "blue"], "b", "blue", "x", None, [(0, 7, "blue")],
                    [(0, 7, "small blue circle up slowly")])
    assert seen_item(colour, 2) is colour
    asks = draw_asks([item, colour] * 200, 8, 2, torch.Generator().manual_seed(0))
    assert set(asks[0::2]) == {2, 3, 4} and set(asks[1::2]) == {1, 2, 3, 4}


def test_the_scene_is_every_shape_fully_described_whatever_is_asked(qa):
    """A thought is written before the question: it must read the same for a clip whatever will be asked of it."""
    _, items = qa.items("train", range(200))
    seen = set()
    for it in items:
        seen.add(it.qtype)
        assert it.scene == sorted(it.scene) and all(len(c.split()) == 5 for _, _, c in it.scene)
        if it.qtype == "count":
            assert len(it.scene) == int(it.answer) and all(s[:2] == (0, 7) for s in it.scene)
        elif it.qtype == "order":
            assert [s[:2] for s in it.scene] == [(0, 3), (4, 7)]
            assert [" ".join(s[2].split()[1:3]) for s in it.scene] == [c for _, _, c in it.clues]
        elif it.qtype == "when":
            assert any(s[:2] == it.span and s[2] == it.reason for s in it.scene)
        else:
            assert it.scene == [(0, 7, it.reason)]
    assert seen == set(STREAM_TYPES)


def test_evaluate_stream_counts_every_ask_and_scores_by_frames(qa):
    m = _model(qa)
    report = evaluate_stream(m, "val", 12, batch=5, qa=qa, latency_num=2)
    _, items = qa.items("val", range(12))
    assert len(report["per_item"]["reward"]) == sum(4 - first_chunk(it, 2) + 1 for it in items)
    assert set(report["accuracy_by_frames"]) == {"2", "4", "6", "8"}
    assert report["answer_latency_ms"] > 0 and report["think_ms_per_chunk"] > 0 and report["streaming"]
    offline = evaluate_stream(_model(qa, causal=False), "val", 12, batch=5, qa=qa, latency_num=1)
    assert offline["per_item"]["item"] == report["per_item"]["item"] and not offline["streaming"]


def test_stream_sft_trains_the_layout_and_saves_a_causal_tower(run_cli, tmp_path):
    """`genrl sft` with sft.stream: the loss is the streams' thought-and-answer cross-entropy, one step moves the
    vision tower and the language model, and the saved model reloads causal in time with the thought tags."""
    from genrl.methods.common import OptimConfig
    from genrl.methods.sft import SFTMethod, SFTMethodConfig
    from genrl.methods.vst import StreamConfig, stream_loss
    from genrl.models.registry import load_model

    torch.manual_seed(0)
    cfg = SFTMethodConfig(size="debug", qa=QAConfig(types=list(STREAM_TYPES)), vision_aux_weight=0.0,
                          stream=StreamConfig(enabled=True))
    m = SFTMethod(cfg, OptimConfig(), 0)
    assert m.model.cfg.causal_time and "<caption>" in m.model.tokenizer.ids
    videos, items = m.qa.items("train", range(8))
    state = m.data.generator.get_state()
    with torch.no_grad():
        got = m.loss(videos, items)
        m.data.generator.set_state(state)
        asks = draw_asks(items, 8, 2, m.data.generator)
        want = stream_loss(m.model, m.model.encode_video(videos), items, asks, 2)
    assert torch.allclose(got, want)
    out = tmp_path / "run"
    code, _, err = run_cli("sft", "sft.size=debug", "sft.stream.enabled=true", "sft.eval_num=8", "eval_num=4",
                           "sft.batch_size=4", "train.steps=2", "train.sample_every=2", f"out_dir={out}", "--quiet")
    assert code == 0, err
    model = load_model(str(out / "model.safetensors"), "vlm")
    assert model.cfg.causal_time and "<time>" in model.tokenizer.ids
    report = __import__("json").loads((out / "eval.json").read_text())
    assert report["task"] == "stream" and report["num"] == 4


def test_stream_sft_refuses_a_chunk_that_splits_a_temporal_patch(run_cli, tmp_path):
    for bad in ("3", "0"):
        code, _, err = run_cli("sft", "sft.size=debug", "sft.stream.enabled=true", f"sft.stream.chunk_frames={bad}",
                               "train.steps=1", f"out_dir={tmp_path / bad}", "--quiet")
        assert code == 2 and "chunk_frames" in err and "\n" not in err.strip(), err


def test_eval_task_stream_refuses_what_it_cannot_ask(run_cli):
    code, _, err = run_cli("eval", "--task", "stream", "--model", "shapes-vlm", "--types", "colour,teleport")
    assert code == 2 and "unknown question type 'teleport'" in err and "\n" not in err.strip()
    code, _, err = run_cli("eval", "--task", "stream", "--model", "shapes-vlm", "--hallucination", "0.5")
    assert code == 2 and "--hallucination is for --task qa" in err
