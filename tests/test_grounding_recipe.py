"""VideoTG-R1 / STVG-R1 / Scene-R1 recipe: temporal and spatial grounding questions, their IoU rewards, and the
difficulty-aware curriculum that masks frames outside the answer's span for hard questions."""

import pytest
import torch

from genrl.methods.common import OptimConfig
from genrl.methods.grpo import CurriculumConfig, GRPOMethodConfig, build_grpo
from genrl.methods.qa import accuracy_reward_name, build_vlm, completion_tokens, target_text
from genrl.registry import TASK_REWARDS
from genrl.worlds.qa import BOX_CELLS, QUESTION_TYPES, QAConfig, ShapesQA, mask_outside, vocabulary
from genrl.worlds.shapes import BACKGROUNDS, COLOURS, VALUES

GROUNDING = QAConfig(types=["when", "where"])


def _row(colour, shape, size="large", direction="right", speed="slowly"):
    return [VALUES["colour"].index(colour), VALUES["shape"].index(shape), VALUES["size"].index(size),
            VALUES["direction"].index(direction), VALUES["speed"].index(speed), 0]


@pytest.mark.parametrize("text,truth,want", [
    ("2 5", "2 5", 1.0), ("2 3", "2 5", 2 / 4), ("5 2", "2 5", 1.0), ("0 1", "4 5", 0.0), ("3 3", "3 3", 1.0),
    ("1 4", "3 6", 2 / 6), ("7", "2 5", 0.0),
])
def test_frame_span_iou_counts_both_end_frames(text, truth, want):
    assert TASK_REWARDS.get("frame_span")(f"<think> x </think> <answer> {text} </answer>", truth) == pytest.approx(want)


@pytest.mark.parametrize("text,truth,want", [
    ("0 0 4 4", "2 2 6 6", 4 / 28), ("2 2 6 6", "2 2 6 6", 1.0), ("6 6 2 2", "2 2 6 6", 1.0), ("0 0 2 2", "4 4 6 6", 0.0),
    ("1 2 3 6", "1 2 3 4", 4 / 8), ("1 2 3", "1 2 3 4", 0.0),
])
def test_box_iou_by_hand(text, truth, want):
    assert TASK_REWARDS.get("box_iou")(f"<think> x </think> <answer> {text} </answer>", truth) == pytest.approx(want)


def test_when_items_show_the_named_shape_in_exactly_the_answered_frames():
    qa = ShapesQA(QAConfig(frames=8, types=["when"]))
    attrs, starts = torch.tensor([_row("red", "circle"), _row("blue", "square")]), torch.tensor([[0.3, 0.3], [0.7, 0.6]])
    red = torch.tensor(COLOURS["red"])[:, None, None]
    seen_spans, distractor = set(), []
    for seed in range(40):
        video, item = qa._when_item(attrs, starts, torch.Generator().manual_seed(seed))
        a, b = (int(x) for x in item.answer.split())
        assert item.span == (a, b) and 2 <= b - a + 1 <= 6 and item.question == "when is the red circle on screen ?"
        red_pixels = ((video - red).abs().amax(1) < 0.02).flatten(1).sum(1)  # (F,)
        assert [f for f in range(8) if red_pixels[f] > 5] == list(range(a, b + 1))
        blue = ((video - torch.tensor(COLOURS["blue"])[:, None, None]).abs().amax(1) < 0.02).flatten(1).sum(1)
        distractor.append(bool((blue > 5).all()))
        assert bool((blue > 5).all()) or bool((blue == 0).all())  # the other shape: throughout or never
        seen_spans.add((a, b))
    assert len(seen_spans) >= 8 and 0 < sum(distractor) < 40
    assert accuracy_reward_name(item) == "frame_span"


def test_where_boxes_enclose_the_rendered_shape_in_eighths():
    qa = ShapesQA(QAConfig(frames=8, types=["where"]))
    attrs = torch.tensor([_row("green", "square", "large", "right", "quickly")])
    start = torch.tensor([[0.30, 0.45]])
    video = qa.render(attrs, start)
    for frame in (0, 3, 6):
        alpha = (video[frame, 1] - BACKGROUNDS["dark"]) / (COLOURS["green"][1] - BACKGROUNDS["dark"])  # green channel
        on = alpha > 0.5
        cols, rows = on.any(0).nonzero().flatten(), on.any(1).nonzero().flatten()
        want = (int(cols[0]) * 8 // 32, int(rows[0]) * 8 // 32, -(-(int(cols[-1]) + 1) * 8 // 32), -(-(int(rows[-1]) + 1) * 8 // 32))
        assert qa.box(attrs, start, frame) == want
    # by hand at frame 0: a large square (half extent 0.2 x 32 = 6.4 px) centred at (9.6, 14.4) px spans x 3.2..16.0
    # and y 8.0..20.8, so pixel columns 3..15 and rows 8..20 (centres inside) -> eighths x 0..4, y 2..6
    assert qa.box(attrs, start, 0) == (0, 2, 4, 6)
    assert qa.box(attrs, torch.tensor([[0.0, 0.45]]), 0) is None  # straddles the left/right edge
    _, items = qa.items("val", range(30))
    for it in items:
        x1, y1, x2, y2 = (int(v) for v in it.answer.split())
        assert 0 <= x1 < x2 <= BOX_CELLS and 0 <= y1 < y2 <= BOX_CELLS and it.span[0] == it.span[1]
        assert it.question == f"where is the shape in frame {it.span[0]} ?"
    assert accuracy_reward_name(items[0]) == "box_iou"
    assert completion_tokens(GROUNDING) == 14 and completion_tokens(QAConfig()) == 12
    model = build_vlm("debug", ShapesQA(GROUNDING))
    assert max(len(model.tokenizer.encode(target_text(it))) + 1 for it in items) == 14  # with <eos>


def test_grounding_is_opt_in_and_grows_the_vocabulary_by_its_words():
    assert not {"when", "where"} & set(QUESTION_TYPES)
    assert set(vocabulary(GROUNDING)) - set(vocabulary()) == {"when", "where", "on", "screen", "in", "frame"}


def test_mask_outside_blanks_the_share_of_frames_outside_the_span_only():
    video = torch.rand(8, 3, 4, 4) + 0.1
    out = mask_outside(video, (2, 4), 0.6, torch.Generator().manual_seed(0))
    blank = [f for f in range(8) if bool((out[f] == 0).all())]
    assert len(blank) == 3 and not set(blank) & {2, 3, 4}  # round(0.6 x 5 outside frames)
    kept = [f for f in range(8) if f not in blank]
    assert torch.equal(out[kept], video[kept])
    assert torch.equal(mask_outside(video, (2, 4), 0.0, torch.Generator()), video)
    assert len([f for f in range(8) if bool((mask_outside(video, (0, 7), 1.0, torch.Generator())[f] == 0).all())]) == 0


def _curriculum(**kw):
    torch.manual_seed(0)
    policy = build_vlm("debug", ShapesQA(GROUNDING))
    cfg = GRPOMethodConfig(variant="tg_grpo", qa=QAConfig(types=["when", "where", "colour"]), prompts_per_step=6,
                           group_size=4, eval_num=0, max_new_tokens=14, curriculum=CurriculumConfig(**kw))
    return build_grpo(cfg, OptimConfig(lr=1e-3, warmup_steps=1), 0, policy)


def test_the_mask_share_falls_linearly_to_zero():
    m = _curriculum(mask_ratio=0.8, decay_steps=100)
    assert [m.mask_ratio(s) for s in (0, 25, 50, 100, 150)] == pytest.approx([0.8, 0.6, 0.4, 0.0, 0.0])


def test_hard_grounding_questions_are_rolled_again_on_masked_videos_and_the_rest_untouched():
    m = _curriculum(hard_below=0.3, mask_ratio=0.75, decay_steps=200)
    videos, items = m.sample()
    ro = m.rollout(videos, items)
    # group means: 0.1 (hard), 0.5, 0.25 (hard), 0.0 (hard unless it has no span), 0.3 (not below), 1.0
    acc = [0.1] * 4 + [0.5] * 4 + [0.25] * 4 + [0.0] * 4 + [0.3] * 4 + [1.0] * 4
    ro.accuracy = torch.tensor(acc)
    ro.rewards = ro.accuracy + m.cfg.format_weight * ro.fmt
    m._step = 100  # share 0.375
    out = m.adjust(ro)
    hard = [p for p in (0, 2, 3) if items[p].span is not None]
    assert m._stats == {"mask_ratio": pytest.approx(0.375), "hard_questions": len(hard) / 6}
    for p in range(6):
        rows = slice(4 * p, 4 * p + 4)
        if p in hard:
            outside = 8 - (items[p].span[1] - items[p].span[0] + 1)
            blank = [f for f in range(8) if bool((out.videos[p, f] == 0).all())]
            assert len(blank) == round(0.375 * outside) and not any(items[p].span[0] <= f <= items[p].span[1] for f in blank)
            assert out.items[p] is items[p]
        else:
            assert torch.equal(out.videos[p], ro.videos[p]) and torch.equal(out.rewards[rows], ro.rewards[rows])
            assert torch.equal(out.ids[rows, : ro.ids.shape[1]], ro.ids[rows])
    assert hard, "the drawn questions should include a hard grounding one"
    m._step = 200  # share 0: nothing is rolled again
    assert m.adjust(ro) is ro
