"""Shapes QA items and the verifiable task rewards, on hand-computed values."""

import pytest
import torch

from rewards.tasks import (choice_reward, format_reward, numeric_reward, progress_reward, soft_choice_reward,
                           temporal_iou, temporal_iou_reward)
from genrl.worlds.qa import LETTERS, QAConfig, ShapesQA, invert, with_hint
from genrl.worlds.shapes import VALUES


def test_items_are_deterministic_and_answers_match_the_clip():
    qa = ShapesQA()
    v1, a = qa.items("test", range(40))
    v2, b = qa.items("test", range(40))
    assert torch.equal(v1, v2) and [x.answer for x in a] == [x.answer for x in b]
    assert v1.shape == (40, qa.cfg.frames, 3, 32, 32)
    for it in a:
        if it.options:
            assert it.options[LETTERS.index(it.answer)] == it.value
            if it.qtype != "order":
                assert sorted(it.options) == sorted(VALUES[it.qtype])
        else:
            assert it.qtype == "count" and it.answer in ("1", "2", "3")
    assert len({it.qtype for it in a}) == 7
    attr = [it for it in a if it.options and it.qtype != "order"]
    assert all(list(it.options) == list(VALUES[it.qtype]) for it in attr)  # fixed order by default
    _, c = ShapesQA(QAConfig(shuffle_options=True)).items("test", range(40))
    assert any(list(it.options) != list(VALUES[it.qtype]) for it in c if it.options and it.qtype != "order")
    assert all(it.options[LETTERS.index(it.answer)] == it.value for it in c if it.options)


def test_order_clips_show_the_first_shape_only_in_the_first_half():
    from genrl.worlds.shapes import COLOURS

    qa = ShapesQA(QAConfig(types=["order"]))
    videos, items = qa.items("train", range(40))
    assert {it.answer for it in items} == {"a", "b"}  # the first shape is not always option (a)
    half = qa.cfg.frames // 2
    for v, it in zip(videos, items):
        first, second = it.reason.split(" then ")
        assert it.value == first and sorted(it.options) == sorted([first, second]) and first != second
        for words, frames in ((first, v[:half]), (second, v[half:])):
            colour = torch.tensor(COLOURS[words.split()[0]])
            near = ((frames - colour[None, :, None, None]).abs().amax(1) < 0.05).flatten(1).any(1)
            assert bool(near.all())  # each half shows its own shape in every frame...
        other = torch.tensor(COLOURS[second.split()[0]])
        if first.split()[0] != second.split()[0]:  # ...and not the other's colour
            assert not bool(((v[:half] - other[None, :, None, None]).abs().amax(1) < 0.05).any())


def test_count_clips_hold_that_many_shapes():
    qa = ShapesQA(QAConfig(types=["count"]))
    videos, items = qa.items("train", range(60))
    area = {1: [], 2: [], 3: []}
    for v, it in zip(videos, items):
        bg = v.flatten(2).median(2).values[0]
        area[int(it.answer)].append(float(((v - bg[None, :, None, None]).abs().sum(1) > 0.3).float().mean()))
    mean = {n: sum(a) / len(a) for n, a in area.items()}
    assert all(area.values())
    assert mean[2] > 1.5 * mean[1] and mean[3] > 1.3 * mean[2]  # covered area grows with the number of shapes
    single = ShapesQA(QAConfig(types=["colour"]))
    assert all(it.qtype == "colour" for it in single.items("train", range(10))[1])
    with pytest.raises(ValueError, match="valid: colour, shape"):
        ShapesQA(QAConfig(types=["colour", "mood"]))


def test_inversion_and_hint():
    qa = ShapesQA(QAConfig(types=["direction"]))
    _, (item,) = qa.items("train", [0])
    inv = invert(item)
    assert set(inv.answer.split()) == set(LETTERS[: len(item.options)]) - {item.answer}
    assert inv.options == item.options and inv.prompt().startswith("which options are not right")
    hinted = with_hint(item)
    assert hinted.answer == item.answer and f"hint : {item.value}" in hinted.prompt()


def test_task_rewards_hand_computed():
    ok = "<think> red </think> <answer> b </answer>"
    assert format_reward(ok) == 1.0 and format_reward("<answer> b </answer>") == 0.0
    assert choice_reward(ok, "b") == 1.0 and choice_reward(ok, "c") == 0.0 and choice_reward("b", "b") == 0.0
    assert soft_choice_reward("<answer> a c </answer>", "a c d") == pytest.approx(2 / 3)
    assert soft_choice_reward("<answer> a b </answer>", "a c d") == 0.0  # b is wrong: no credit
    assert soft_choice_reward("<answer> a c d </answer>", "a c d") == 1.0
    assert numeric_reward("<answer> 3 </answer>", "3") == 1.0 and numeric_reward("<answer> 2 </answer>", "3") == 0.0
    assert numeric_reward("<answer> 2 </answer>", "4", tolerance=1.0) == pytest.approx(0.5)
    assert temporal_iou((2, 6), (4, 8)) == pytest.approx(2 / 6) and temporal_iou((0, 1), (2, 3)) == 0.0
    assert temporal_iou_reward("<answer> 4.0 to 8 </answer>", "2 6") == pytest.approx(2 / 6)
    assert progress_reward("<answer> 70 </answer>", "40") == pytest.approx(0.7)
    assert progress_reward("<answer> 0 </answer>", "100") == 0.0
