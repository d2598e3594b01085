"""VerIPO recipe: the rollout-aware verifier, the preference pairs it picks, the DPO loss, and the GRPO -> DPO cycle."""

import math

import pytest
import torch

from genrl import grpo as G
from genrl.methods.common import OptimConfig
from genrl.methods.grpo import GRPOMethodConfig, VerIPOConfig, build_grpo, preference_pair
from genrl.methods.qa import build_vlm, verify
from genrl.worlds.qa import NONE, QAItem, ShapesQA

from tiny import OneProcess  # noqa: E402  (the single-process Accelerator stand-in)


def _text(think: str, answer: str) -> str:
    return f"<think> {think} </think> <answer> {answer} </answer>"


COLOUR = QAItem("colour", "what colour is the shape ?", ["red", "green", "blue", "yellow"], "b", "green",
                "small green square left slowly")


@pytest.mark.parametrize("text,want", [
    (_text("small green square left slowly", "b"), 1.0),   # every claim true, the answer's value claimed
    (_text("green", "b"), 1.0),                             # fewer claims, all true
    (_text("small green square right slowly", "b"), 0.0),  # a false claim (direction)
    (_text("small green square left slowly", "c"), 0.0),   # the answer (blue) disagrees with the claims
    (_text("the shape", "b"), 0.0),                         # no claim at all
    (_text("small green square left slowly", "b c"), 0.0),  # not one option
    ("small green square left slowly b", 0.0),              # no think block
])
def test_verifier_by_hand_on_a_choice_question(text, want):
    assert verify(text, COLOUR) == want


def test_verifier_on_counts_order_and_none_of_these():
    count = QAItem("count", "how many shapes are there ?", [], "2", "2", "red circle blue square")
    assert verify(_text("red circle blue square", "2"), count) == 1.0
    assert verify(_text("red circle blue square", "3"), count) == 0.0  # two kinds described, three answered
    assert verify(_text("red circle green square", "2"), count) == 0.0  # green is not in the clip
    order = QAItem("order", "which shape comes first ?", ["blue square", "red circle"], "b", "red circle",
                   "red circle then blue square")
    assert verify(_text("red circle then blue square", "b"), order) == 1.0
    assert verify(_text("red circle then blue square", "a"), order) == 1.0  # claims both: agreement is about words
    assert verify(_text("red circle", "a"), order) == 0.0  # answers blue square without claiming it
    none = QAItem("colour", "what colour is the shape ?", ["red", "blue", NONE], "c", NONE, "small green square left slowly")
    assert verify(_text("small green square left slowly", "c"), none) == 1.0


def test_preference_pairs_prefer_right_answers_on_unverified_reasoning_as_the_rejected_one():
    assert preference_pair([1, 1, 0, 1], [0, 1, 0, 0]) == (1, 0)  # right but unverified beats a wrong one
    assert preference_pair([0, 0, 1, 0], [1, 0, 1, 0]) == (2, 0)  # only wrong ones left to reject
    assert preference_pair([1, 1, 1, 1], [1, 1, 1, 1]) is None  # nothing to reject
    assert preference_pair([0, 1, 0, 1], [1, 0, 1, 0]) is None  # nothing to choose (verified ones are wrong)


def test_dpo_loss_by_hand():
    lc, lr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, margin = G.dpo_loss(lc, lr, rc, rr, 0.5)
    want = [0.5 * ((-3 + 3.5) - (-4 + 3)), 0.5 * ((-5 + 4) - (-2 + 3))]  # 0.75, -1.0
    torch.testing.assert_close(margin, torch.tensor(want))
    torch.testing.assert_close(loss, torch.tensor(sum(math.log1p(math.exp(-m)) for m in want) / 2))


def _veripo(**kw):
    torch.manual_seed(0)
    policy = build_vlm("debug", ShapesQA())
    cfg = GRPOMethodConfig(variant="veripo", prompts_per_step=4, group_size=4, eval_num=0, beta=0.0,
                           veripo=VerIPOConfig(**{"grpo_steps": 2, "dpo_steps": 2, "dpo_batch": 4, **kw}))
    return build_grpo(cfg, OptimConfig(lr=1e-2, warmup_steps=1), 0, policy)


def test_a_cycle_is_grpo_steps_then_dpo_steps_on_the_verifiers_pairs(monkeypatch):
    import genrl.methods.qa as qa_mod
    from genrl.train.trainer import StepContext, TrainConfig

    m = _veripo()
    assert [m.phase(s) for s in range(1, 9)] == ["grpo", "grpo", "dpo", "dpo"] * 2
    assert m.ref is not None  # DPO's reference even with beta 0
    ctx = StepContext(OneProcess(), TrainConfig(grad_clip=1.0))
    videos, items = m.sample()
    ro = m.rollout(videos, items)
    # every group: row 0 a right answer the verifier passes, row 1 a right one it fails, rows 2-3 wrong
    ro.accuracy = torch.tensor([1.0, 1.0, 0.0, 0.0] * 4)
    ro.texts = [_text(it.reason, it.answer) if g == 0 else "x" for it in items for g in range(4)]
    monkeypatch.setattr(qa_mod, "verify", lambda text, item: float(text == _text(item.reason, item.answer)))
    m.adjust(ro)
    monkeypatch.undo()
    assert len(m.buffer) == 4
    pair = m.buffer.pairs[0]
    assert torch.equal(pair["chosen"], ro.ids[0][ro.mask[0]]) and torch.equal(pair["rejected"], ro.ids[1][ro.mask[1]])
    assert torch.equal(pair["video_emb"], ro.video_emb[0])
    before = {k: v.clone() for k, v in m.policy.state_dict().items()}
    margins = [m.dpo_step(ctx)["dpo_margin"] for _ in range(3)]
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and margins[-1] > margins[0]  # starts at the reference, moves
    changed = [k for k, v in m.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and not any(k.startswith("visual.") for k in changed)  # the language model learns, the tower not
    # checkpoint state carries the pairs; a new cycle drops them
    state = m.stateful()["pairs"].state_dict()
    other = _veripo()
    other.stateful()["pairs"].load_state_dict(state)
    assert len(other.buffer) == 4 and torch.equal(other.buffer.pairs[3]["rejected"], m.buffer.pairs[3]["rejected"])
    out = m.train_step(5, ctx)  # step 5 opens cycle 2: its GRPO step collects anew
    assert out["dpo_pairs"] == len(m.buffer) and all(p is not pair for p in m.buffer.pairs)


def test_veripo_refuses_a_trained_vision_tower():
    with pytest.raises(ValueError, match="veripo .* needs the vision tower frozen"):
        _veripo_cfg = GRPOMethodConfig(variant="veripo", train_vision=True, cache_video=False, eval_num=0)
        build_grpo(_veripo_cfg, OptimConfig(), 0, build_vlm("debug", ShapesQA()))


def test_eval_reports_the_share_of_verified_reasoning():
    from genrl.methods.qa import evaluate_qa

    torch.manual_seed(0)
    model = build_vlm("debug", ShapesQA())
    report = evaluate_qa(model, "val", 12, batch=6)
    assert report["consistency"] == pytest.approx(sum(report["per_item"]["consistent"]) / 12)
    assert set(report["per_item"]["consistent"]) <= {0.0, 1.0}


def test_the_nll_term_adds_the_chosen_answers_mean_token_nll_to_dpo():
    from genrl.models.vlm import pad_batch
    from genrl.train.trainer import StepContext, TrainConfig

    losses, picks = {}, {}
    for w in (0.0, 0.5):
        m = _veripo(nll_weight=w, dpo_batch=3)
        videos, items = m.sample()
        ro = m.rollout(videos, items)
        for p in range(4):  # rows 0 and 1 of each group as chosen and rejected
            m.buffer.pairs.append({"video_emb": ro.video_emb[p], "prompt": ro.prompt_ids[4 * p][ro.prompt_mask[4 * p]],
                                   "chosen": ro.ids[4 * p][ro.mask[4 * p]], "rejected": ro.ids[4 * p + 1][ro.mask[4 * p + 1]]})
        g = torch.Generator()
        g.set_state(m.data.generator.get_state())
        picks[w] = torch.randint(4, (3,), generator=g).tolist()
        chosen = [m.buffer.pairs[i] for i in picks[w]]
        p_ids, p_mask = pad_batch([c["prompt"].tolist() for c in chosen], m.policy.tokenizer.pad_id, left_pad=True)
        ids, mask = pad_batch([c["chosen"].tolist() for c in chosen], m.policy.tokenizer.pad_id, left_pad=False)
        with torch.no_grad():
            lp = m.policy.token_logprobs(torch.stack([c["video_emb"] for c in chosen]), p_ids, p_mask, ids, mask)
        nll = float(-(lp * mask).sum() / mask.sum())
        losses[w] = m.dpo_step(StepContext(OneProcess(), TrainConfig(grad_clip=1.0)))["loss"]
    assert picks[0.0] == picks[0.5] and nll > 0
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * nll, rel=1e-4)


def test_dpo_passes_split_by_train_grad_accum_give_the_one_pass_update():
    from genrl.train.trainer import StepContext, TrainConfig

    moved, outs = {}, {}
    for parts in (1, 2, 3):  # 3 pairs: one pass, 2 + 1, one pair a pass
        m = _veripo(nll_weight=0.5, dpo_batch=3)
        ro = m.rollout(*m.sample())
        for p in range(4):
            m.buffer.pairs.append({"video_emb": ro.video_emb[p], "prompt": ro.prompt_ids[4 * p][ro.prompt_mask[4 * p]],
                                   "chosen": ro.ids[4 * p][ro.mask[4 * p]], "rejected": ro.ids[4 * p + 1][ro.mask[4 * p + 1]]})
        m.opt, m.sched = torch.optim.SGD([p for p in m.policy.parameters() if p.requires_grad], lr=1.0), None
        before = {n: p.detach().clone() for n, p in m.policy.named_parameters()}
        outs[parts] = m.dpo_step(StepContext(OneProcess(), TrainConfig(grad_clip=0, grad_accum=parts)))
        moved[parts] = {n: before[n] - p.detach() for n, p in m.policy.named_parameters()}
    assert sum(float(d.abs().sum()) for d in moved[1].values()) > 0
    for parts in (2, 3):
        for n, d in moved[1].items():
            torch.testing.assert_close(moved[parts][n], d, rtol=1e-5, atol=1e-7)
        for key in ("loss", "grad_norm", "dpo_margin", "dpo_accuracy"):
            assert outs[parts][key] == pytest.approx(outs[1][key], rel=1e-5, abs=1e-8), key
