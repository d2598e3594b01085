"""Video-Thinker (grounded clue traces, the clue reward) and SOLE-R1's second half (a trained VLM as a dense,
differentiable reward for a video generator)."""

import pytest
import torch

from genrl.methods.common import OptimConfig
from genrl.methods.grpo import GRPOMethodConfig, ThinkerConfig, build_grpo
from genrl.methods.qa import THINKER_TOKENS, _qa_config_for, build_vlm, completion_tokens, fit_vocabulary, target_text
from genrl.registry import TASK_REWARDS
from genrl.worlds.qa import QAConfig, ShapesQA, clue_text, vocabulary

clues = TASK_REWARDS.get("clues")


def _think(body: str) -> str:
    return f"<think> {body} </think> <answer> a </answer>"


TRUTH = "<time> 0 3 </time> <caption> red circle </caption> <time> 4 7 </time> <caption> blue square </caption>"


@pytest.mark.parametrize("body,want", [
    (TRUTH, 1.0),
    ("<time> 0 3 </time> <caption> red circle </caption>", 1 / 2),                   # one clue of two
    ("<time> 0 1 </time> <caption> red circle </caption> <time> 4 7 </time> <caption> blue square </caption>",
     (2 / 4 + 1) / 2),                                                                # half the first span
    ("<time> 0 3 </time> <caption> red square </caption> <time> 4 7 </time> <caption> blue square </caption>",
     (1 / 3 + 1) / 2),                                                                # caption words 1 of 3
    (TRUTH + " <time> 0 7 </time> <caption> green circle </caption>", 2 / 3),         # an extra clue costs
    ("<time> 4 7 </time> <caption> blue square </caption> <time> 0 3 </time> <caption> red circle </caption>", 1.0),
    ("red circle then blue square", 0.0),                                             # no clue at all
])
def test_clue_reward_by_hand(body, want):
    assert clues(_think(body), TRUTH) == pytest.approx(want)
    assert clues(body, TRUTH) == 0.0  # outside a think block nothing counts


def test_thinker_traces_say_what_is_on_screen_when_and_change_nothing_else():
    types = ["colour", "count", "order", "when"]
    plain = ShapesQA(QAConfig(types=types, hallucination=0.5))
    thinker = ShapesQA(QAConfig(types=types, hallucination=0.5, thinker=True))
    va, a = plain.items("val", range(40))
    vb, b = thinker.items("val", range(40))
    assert torch.equal(va, vb) and [x.prompt() for x in a] == [y.prompt() for y in b]  # same clips and questions
    assert [x.answer for x in a] == [y.answer for y in b] and [x.clues for x in a] == [y.clues for y in b]
    seen = set()
    for x, y in zip(a, b):
        assert y.reason == clue_text(x.clues) and x.reason != y.reason
        if x.qtype == "order":  # the two halves, in order, each shape by colour and kind
            first, second = x.reason.split(" then ")
            assert x.clues == [(0, 3, first), (4, 7, second)]
        elif x.qtype == "count":
            assert len(x.clues) == int(x.answer) and all(c[:2] == (0, 7) for c in x.clues)
        elif x.qtype == "when":
            assert x.span in [c[:2] for c in x.clues] and len(x.clues) in (1, 2)
        elif x.value == "none of these" and "then" in x.reason:  # a counterexample: each half its own description
            assert [c[:2] for c in x.clues] == [(0, 3), (4, 7)] and " then ".join(c[2] for c in x.clues) == x.reason
        else:
            assert x.clues == [(0, 7, x.reason)]
        seen.add(x.qtype)
        assert clues(target_text(y), clue_text(y.clues)) == 1.0  # the SFT target earns the whole reward
    assert seen == set(types)
    assert set(vocabulary(thinker.cfg)) - set(vocabulary(plain.cfg)) == {"<time>", "</time>", "<caption>", "</caption>"}
    model = fit_vocabulary(build_vlm("debug", plain), thinker.cfg)
    longest = max(len(model.tokenizer.encode(target_text(y))) + 1 for y in thinker.items("val", range(200))[1])
    assert longest == THINKER_TOKENS == completion_tokens(thinker.cfg)
    assert _qa_config_for(model).thinker and not _qa_config_for(build_vlm("debug", plain)).thinker


def test_the_thinker_variant_adds_the_weighted_clue_reward():
    qa = QAConfig(thinker=True, types=["order", "count"])
    with pytest.raises(ValueError, match="grpo.qa.thinker=true"):
        build_grpo(GRPOMethodConfig(variant="thinker", eval_num=0), OptimConfig(), 0, build_vlm("debug", ShapesQA()))
    torch.manual_seed(0)
    policy = fit_vocabulary(build_vlm("debug", ShapesQA()), qa)
    m = build_grpo(GRPOMethodConfig(variant="thinker", qa=qa, prompts_per_step=2, group_size=2, eval_num=0,
                                    max_new_tokens=THINKER_TOKENS, thinker=ThinkerConfig(clue_weight=0.4)),
                   OptimConfig(), 0, policy)
    videos, items = m.sample()
    ro = m.rollout(videos, items)
    before = ro.rewards.clone()
    ro.texts = [_think(clue_text(items[0].clues)), "x", _think(clue_text(items[1].clues[:1])), "x"]
    m._stats = {}
    out = m.adjust(ro)
    want = torch.tensor([1.0, 0.0, 1 / len(items[1].clues), 0.0])
    torch.testing.assert_close(out.rewards - before, 0.4 * want)
    assert m._stats["reward_clues"] == pytest.approx(float(want.mean()))


# ------------------------------------------------------------------ the VLM as a reward for a video generator
@pytest.fixture(scope="module")
def vlm_reward():
    from rewards.vlm import vlm_reward as build

    return build("shapes-vlm", calibration=64)


def test_vlm_reward_calibrates_on_real_clips_and_reads_the_generators_frames(vlm_reward):
    from genrl.evaluation import load_reward
    from genrl.worlds.shapes import ShapesWorld, WorldConfig

    assert type(load_reward("vlm")).__name__ == "VLMReward"
    world = ShapesWorld(WorldConfig(frames=8))
    videos, captions, _ = world.random_clips("train", 64, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = vlm_reward(videos, captions).z  # the calibration set itself: mean 0, std 1 per axis
    assert vlm_reward.axes == ("mq", "ta")
    for a in ("mq", "ta"):
        assert float(z[a].mean()) == pytest.approx(0.0, abs=1e-4) and float(z[a].std()) == pytest.approx(1.0, abs=1e-4)
    nine, _, _ = ShapesWorld().random_clips("train", 2, torch.Generator().manual_seed(1))  # 9 frames: reads 8
    eight = nine[:, :8]
    torch.testing.assert_close(vlm_reward(nine, captions[:2]).raw["ta"], vlm_reward(eight, captions[:2]).raw["ta"])
    assert vlm_reward.read_indices(9) == list(range(8))


def test_vlm_reward_drops_on_the_axis_whose_attribute_is_wrong(vlm_reward):
    from genrl.worlds.shapes import ShapesWorld, caption

    world = ShapesWorld()
    videos, _, attrs = world.clips("val", range(16))
    from genrl.worlds.shapes import VALUES, attribute_names

    right, colour, direction = [], [], []
    for row in attrs.tolist():
        names = attribute_names(row)
        right.append(caption(names))
        c = VALUES["colour"][(VALUES["colour"].index(names["colour"]) + 1) % 4]
        colour.append(caption({**names, "colour": c}))
        d = VALUES["direction"][(VALUES["direction"].index(names["direction"]) + 1) % 4]
        direction.append(caption({**names, "direction": d}))
    with torch.no_grad():
        ok, bad_c, bad_d = (vlm_reward(videos, p).z for p in (right, colour, direction))
    assert bool((bad_c["ta"] < ok["ta"] - 1).all()) and bool((bad_d["mq"] < ok["mq"] - 1).all())


def test_vlm_reward_scores_only_what_a_prompt_names_and_has_gradients_to_the_pixels(vlm_reward):
    from genrl.worlds.shapes import ShapesWorld

    videos, captions, _ = ShapesWorld().clips("val", range(3))
    partial = ["a red square", "a big circle going left", "something"]
    z = vlm_reward(videos, partial).z
    assert float(z["mq"][0]) == 0.0 and float(z["ta"][2]) == 0.0 and float(z["mq"][2]) == 0.0  # nothing named
    assert float(z["mq"][1]) != 0.0 and float(z["ta"][0]) != 0.0
    x = videos.clone().requires_grad_(True)
    vlm_reward(x, captions).raw["ta"].sum().backward()
    assert float(x.grad.abs().sum()) > 0
    maps = vlm_reward.saliency(videos, captions)
    assert maps["mq"].shape == (3, 9, 32, 32) and float(maps["mq"][:, :8].sum()) > 0
    torch.testing.assert_close(maps["mq"][:, 8], maps["mq"][:, 7])  # the frame it does not read: its neighbour's


def test_a_reward_can_name_its_backend_and_weights():
    from genrl.errors import UsageError
    from genrl.evaluation import load_reward
    from genrl.models.registry import load_model

    r = load_reward("vlm:shapes-vlm-sft")
    want = load_model("shapes-vlm-sft", "vlm").state_dict()
    assert all(torch.equal(v, want[k]) for k, v in r.vlm.state_dict().items())
    assert not torch.equal(r.vlm.state_dict()["embed.weight"], load_model("shapes-vlm", "vlm").state_dict()["embed.weight"])
    with pytest.raises(UsageError, match="unknown backend 'nope'; valid: .*vlm"):
        load_reward("nope:x")


def test_vlm_reward_calibrated_on_a_generator_puts_its_videos_at_z_zero():
    from genrl.generation import SamplingConfig, generate
    from genrl.models.registry import load_model
    from genrl.worlds.shapes import ShapesWorld
    from rewards.vlm import vlm_reward as build

    # the generator configs/experiments/stream_r1_vlm_reward.yaml calibrates on (4 steps a chunk)
    r = build("shapes-vlm", calibration=8, calibrate_on="shapes-student-ode-base")
    prompts = ShapesWorld().random_prompts("train", 8, torch.Generator().manual_seed(0))
    videos = generate(load_model("shapes-student-ode-base", "video_model"), prompts, 9, SamplingConfig(), seed=0).videos
    with torch.no_grad():
        z = r(videos, prompts).z
    for a in ("mq", "ta"):
        assert float(z[a].mean()) == pytest.approx(0.0, abs=1e-4) and float(z[a].std()) == pytest.approx(1.0, abs=1e-4)
    real = build("shapes-vlm", calibration=8)
    assert float(r.score_std[1]) > 5 * float(real.score_std[1])  # the student's videos spread far wider than real clips


def test_stream_r1_takes_a_reward_calibration_only_for_the_vlm_reward(run_cli, tmp_path):
    code, _, err = run_cli("distill", "--config", "configs/stream_r1.yaml", "stream_r1.reward_calibration=shapes-student-ode",
                           "train.steps=1", f"out_dir={tmp_path / 'x'}", "--quiet")
    assert code == 2 and "'stream_r1.reward_calibration' is for the vlm reward" in err and len(err.strip().splitlines()) == 1
