"""PRIMO / SOLE-R1 recipe: progress questions (how far across the frame a shape has come), a dense MAE reward."""

import pytest
import torch

from genrl.methods.qa import accuracy_reward_name, build_vlm, fit_vocabulary
from genrl.registry import TASK_REWARDS
from genrl.worlds.qa import PROGRESS_ANSWERS, QUESTION_TYPES, QAConfig, ShapesQA, vocabulary
from genrl.worlds.shapes import VALUES


def _attrs(direction: str, speed: str) -> torch.Tensor:
    return torch.tensor([[0, 0, 0, VALUES["direction"].index(direction), VALUES["speed"].index(speed), 0]])


@pytest.mark.parametrize("direction,speed,start,want", [
    ("right", "quickly", (0.10, 0.5), 0.10 + 0.065 * 7),      # 0.555 -> the 50s
    ("left", "quickly", (0.90, 0.5), 1 - (0.90 - 0.065 * 7)),  # at x 0.445, having come 0.555 leftwards
    ("down", "slowly", (0.5, 0.20), 0.20 + 0.03 * 7),          # square frames: y moves by the width's fraction
    ("up", "slowly", (0.5, 0.10), 1 - ((0.10 - 0.03 * 7) % 1)),  # wrapped past the top
])
def test_progress_by_hand_along_each_direction(direction, speed, start, want):
    qa = ShapesQA(QAConfig(frames=8))
    attrs, starts = _attrs(direction, speed), torch.tensor([start])
    assert qa.progress(attrs, starts) == pytest.approx(want % 1.0, abs=1e-6)
    assert qa.progress_answer(attrs, starts) == str(10 * int(10 * (want % 1.0)))


def test_progress_items_are_opt_in_and_their_words_grow_the_vocabulary():
    assert "progress" not in QUESTION_TYPES  # default streams stay as they were
    cfg = QAConfig(types=["progress", "colour"])
    _, items = ShapesQA(cfg).items("val", range(60))
    prog = [it for it in items if it.qtype == "progress"]
    assert prog and all(it.answer in PROGRESS_ANSWERS and it.options == [] for it in prog)
    assert len({it.answer for it in prog}) >= 5
    assert accuracy_reward_name(prog[0]) == "progress"
    reward = TASK_REWARDS.get("progress")
    truth = prog[0].answer
    assert reward(f"<think> x </think> <answer> {truth} </answer>", truth) == 1.0
    off = str((int(truth) + 30) % 100)
    assert reward(f"<think> x </think> <answer> {off} </answer>", truth) == pytest.approx(1 - abs(int(off) - int(truth)) / 100)
    torch.manual_seed(0)
    model = build_vlm("debug", ShapesQA(QAConfig()))
    before = len(model.tokenizer)
    fit_vocabulary(model, cfg)
    assert {"far", "across", "frame", "come", "90"} <= set(model.tokenizer.ids) and len(model.tokenizer) > before
    assert set(vocabulary(cfg)) - set(vocabulary()) == set(model.tokenizer.tokens) - set(build_vlm("debug", ShapesQA()).tokenizer.tokens)


def test_eval_asks_the_types_it_is_given(run_cli, tmp_path):
    from genrl.models.registry import save_weights

    torch.manual_seed(0)
    model = build_vlm("debug", ShapesQA(QAConfig()))
    path = save_weights(model, tmp_path / "m.safetensors", "vlm", model.cfg)
    code, out, _ = run_cli("eval", "--task", "qa", "--checkpoint", str(path), "--num", "8", "--types", "progress,count", "--quiet")
    assert code == 0 and "progress=" in out and "count=" in out and "colour=" not in out
    code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", str(path), "--types", "speeed", "--quiet")
    assert code == 2 and "unknown question type 'speeed'" in err
