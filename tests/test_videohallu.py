"""VideoHallu recipe: "none of these" questions, counterexample clips, and a vocabulary that grows for them."""

import collections

import pytest
import torch

from genrl.methods.qa import build_vlm, evaluate_qa, fit_vocabulary, prompts
from genrl.models.registry import save_weights, load_model
from genrl.worlds.qa import CHOICE_TYPES, LETTERS, NONE, QAConfig, ShapesQA, vocabulary
from genrl.worlds.shapes import ATTRIBUTES, VALUES


def test_set_shares_offer_none_of_these_and_need_it_and_the_rest_keep_their_options():
    qa = ShapesQA(QAConfig(hallucination=0.3, none_option=0.6, types=list(CHOICE_TYPES)))
    _, items = qa.items("train", range(800))
    plain = ShapesQA(QAConfig(types=list(CHOICE_TYPES)))
    _, before = plain.items("train", range(800))
    kinds = collections.Counter()
    for it, old in zip(items, before):
        assert it.answer == LETTERS[it.options.index(it.value)] and len(it.options) <= len(LETTERS)
        if NONE in it.options:
            assert it.options[-1] == NONE
            kinds["none" if it.value == NONE else "offered"] += 1
        else:  # the usual list: every value in its fixed order
            assert it.options == list(VALUES[it.qtype])
            kinds["usual"] += 1
    n = len(items)
    assert kinds["none"] / n == pytest.approx(0.3, abs=0.05) and kinds["offered"] / n == pytest.approx(0.3, abs=0.05)
    # offering it says nothing by itself: among questions that offer it, it is the answer about half the time
    assert kinds["none"] / (kinds["none"] + kinds["offered"]) == pytest.approx(0.5, abs=0.07)
    assert all(NONE not in it.options for it in before)
    assert ShapesQA(QAConfig(hallucination=0.3, types=list(CHOICE_TYPES))).items("train", range(50))[1][0].options[-1] == NONE


def test_absent_items_leave_the_clips_value_out_and_counterexamples_offer_both_values():
    qa = ShapesQA(QAConfig(hallucination=1.0, types=list(CHOICE_TYPES)))
    _, items = qa.items("test", range(300))
    absent = counter = 0
    for it in items:
        assert it.value == NONE and it.answer == LETTERS[len(it.options) - 1]
        words = it.reason.split()
        if "then" in words:  # counterexample: what the first and second halves show, both among the options
            counter += 1
            a = ATTRIBUTES.index(it.qtype)
            first, second = words[: words.index("then")], words[words.index("then") + 1 :]
            order = (2, 0, 1, 3, 4)  # reason words: size colour shape direction speed
            v1, v2 = first[order.index(a)], second[order.index(a)]
            assert v1 != v2 and {v1, v2} <= set(it.options)
            assert [w for i, w in enumerate(first) if i != order.index(a)] == [w for i, w in enumerate(second) if i != order.index(a)]
        else:
            absent += 1
            a = ATTRIBUTES.index(it.qtype)
            shown = it.reason.split()[(2, 0, 1, 3, 4).index(a)]
            assert shown in VALUES[it.qtype] and shown not in it.options
    assert absent > 100 and counter > 100


def test_a_counterexample_clip_changes_halfway_without_a_jump():
    qa = ShapesQA(QAConfig(frames=8))
    world = qa.world
    attrs = torch.tensor([[0, 1, 1, 0, 1, 0]])  # red circle, large, moving left, quickly
    for a, other in ((3, 2), (4, 0), (0, 2)):  # turns up; slows down; turns blue
        second = attrs.clone()
        second[0, a] = other
        starts = torch.tensor([[0.37, 0.61]])
        cont = qa.continued_start(attrs, second, starts)
        one, _ = world.layers(attrs, starts, 8)
        two, _ = world.layers(second, cont, 8)
        torch.testing.assert_close(two[0, 4], one[0, 4], atol=1e-5, rtol=0)  # same place at the middle frame
        video = qa.render(torch.cat((attrs, second)), torch.cat((starts, cont)), qa._halves())
        torch.testing.assert_close(video[:4], qa.render(attrs, starts)[:4])
        torch.testing.assert_close(video[4:], qa.render(second, cont)[4:])
    # a turn: the path bends at the middle frame, the two halves move in the directions named
    second = attrs.clone()
    second[0, 3] = 2  # up
    cont = qa.continued_start(attrs, second, torch.tensor([[0.5, 0.5]]))
    assert cont[0, 0] == pytest.approx((0.5 - 0.065 * 4) % 1) and cont[0, 1] == pytest.approx((0.5 + 0.065 * 4) % 1)


def test_the_vocabulary_grows_by_the_new_words_and_old_tokens_keep_their_ids_rows_and_logits(tmp_path):
    qa = ShapesQA(QAConfig(frames=8))
    torch.manual_seed(0)
    model = build_vlm("debug", qa).eval()
    old_len, old_rows = len(model.tokenizer), model.embed.weight.detach().clone()
    hallu = QAConfig(frames=8, hallucination=0.5)
    videos, items = ShapesQA(QAConfig(frames=8)).items("val", range(4))
    ids, mask = prompts(model, items)
    with torch.no_grad():
        emb = model.encode_video(videos)
        before = model._forward(torch.cat((model._embed_prefix(emb, ids),), 1),
                                torch.cat((torch.ones(4, emb.shape[1] + 2, dtype=torch.bool), mask), 1))
    missing = [w for w in NONE.split() if w not in model.tokenizer.ids]
    from genrl.models.vlm import UNK

    assert missing and model.tokenizer.encode(NONE).count(UNK) == len(missing)  # unknown words read as <unk> before
    added = fit_vocabulary(model, hallu).add_words(vocabulary(hallu))
    n = len(missing)
    assert added == [] and len(model.tokenizer) == old_len + n  # added once, by fit_vocabulary
    assert [model.tokenizer.ids[w] for w in missing] == list(range(old_len, old_len + n))
    assert model.tokenizer.encode("what colour is the shape ?") == [model.tokenizer.ids[w] for w in "what colour is the shape ?".split()]
    assert torch.equal(model.embed.weight[:old_len], old_rows)
    torch.testing.assert_close(model.embed.weight[old_len:], old_rows.mean(0).expand(n, -1))
    with torch.no_grad():
        after = model._forward(torch.cat((model._embed_prefix(emb, ids),), 1),
                               torch.cat((torch.ones(4, emb.shape[1] + 2, dtype=torch.bool), mask), 1))
    torch.testing.assert_close(after[..., :old_len], before)  # tied head: only new columns
    path = save_weights(model, tmp_path / "vlm.safetensors", "vlm", model.cfg)
    back = load_model(str(path), "vlm")
    assert back.tokenizer.tokens == model.tokenizer.tokens and torch.equal(back.embed.weight, model.embed.weight)


def test_grpo_grows_policy_and_reference_alike_and_scores_the_none_letter(tmp_path):
    from genrl.methods.common import OptimConfig
    from genrl.methods.grpo import GRPOMethodConfig, build_grpo
    from genrl.registry import TASK_REWARDS

    torch.manual_seed(0)
    qa = ShapesQA(QAConfig(frames=8))
    policy = build_vlm("debug", qa)
    path = save_weights(policy, tmp_path / "p.safetensors", "vlm", policy.cfg)
    cfg = GRPOMethodConfig(policy=str(path), qa=QAConfig(frames=8, hallucination=0.3), eval_num=0)
    method = build_grpo(cfg, OptimConfig(), 0)
    assert NONE.split()[0] in method.policy.tokenizer.ids
    assert method.ref is not None and torch.equal(method.ref.embed.weight, method.policy.embed.weight)
    _, items = method.qa.items("train", range(40))
    none_items = [it for it in items if it.value == NONE]
    assert none_items
    choice = TASK_REWARDS.get("choice")
    for it in none_items:
        assert choice(f"<think> x </think> <answer> {it.answer} </answer>", it.answer) == 1.0
        wrong = LETTERS[0]
        assert choice(f"<think> x </think> <answer> {wrong} </answer>", it.answer) == 0.0


def test_evaluation_reports_none_of_these_questions_apart(run_cli, tmp_path):
    torch.manual_seed(0)
    qa = ShapesQA(QAConfig(frames=8))
    model = build_vlm("debug", qa)
    report = evaluate_qa(model, "test", 24, hallucination=1.0)
    assert set(report["per_type"]) <= {"hallucination", "count", "order"} and "hallucination" in report["per_type"]
    path = save_weights(model, tmp_path / "m.safetensors", "vlm", model.cfg)
    code, out, err = run_cli("eval", "--task", "qa", "--checkpoint", str(path), "--num", "24", "--hallucination", "1.0", "--quiet")
    assert code == 0 and "hallucination=" in out
    code, _, err = run_cli("eval", "--model", "shapes-teacher", "--hallucination", "0.5", "--quiet")
    assert code == 2 and "--hallucination is for --task qa" in err
