"""Reward fine-tuning on generated clips judged by the probe: grades, pair labels, the ranking figure, the loss."""

import pytest
import torch

import rewards.training as T
from genrl.methods.common import OptimConfig
from genrl.worlds.probe import AttributeProbe
from genrl.worlds.shapes import ShapesWorld, WorldConfig, attribute_names, caption
from rewards.shapes import ShapesRewardConfig


def test_probe_grades_count_the_named_attributes_read_back():
    world = ShapesWorld(WorldConfig())
    clips, caps, attrs = world.clips("test", [0, 1])
    names = attribute_names(attrs[0].tolist())
    other_colour = next(c for c in ("red", "green", "blue", "yellow") if c != names["colour"])
    wrong_colour = caption({**names, "colour": other_colour})  # clip 0 under a caption naming another colour
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong_way = caption({**names, "direction": flip[names["direction"]]})
    blank = clips[1:2] * 0 + clips[1, 0, :, 0, 0][None, None, :, None, None]  # one flat grey: no object at all
    results = AttributeProbe().read(torch.cat((clips[:1], clips[:1], clips[:1], blank)))
    grades = T.probe_scores(results, [caps[0], wrong_colour, wrong_way, caps[1]])
    assert grades.tolist() == [[4.0, 2.0, 4.0], [4.0, 2.0, 3.0], [4.0, 1.0, 4.0], [0.0, -1.0, -1.0]]


def _pool(scores: list[list[float]], prompt: list[int]) -> dict:
    n = len(scores)
    videos = torch.arange(n, dtype=torch.uint8)[:, None, None, None, None].expand(n, 2, 3, 4, 4).clone()
    pool = {"videos": videos, "prompt": torch.tensor(prompt), "captions": [f"p{i}" for i in range(max(prompt) + 1)],
            "scores": torch.tensor(scores)}
    pool["groups"] = [i for i in range(len(pool["captions"]))
                      if len({tuple(r) for r in pool["scores"][pool["prompt"] == i].tolist()}) > 1]
    return pool


def test_generated_pairs_label_every_axis_by_the_grades_and_stay_within_a_prompt_unless_crossing():
    pool = _pool([[4, 2, 4], [4, 1, 4], [0, -1, -1], [4, 2, 4], [4, 2, 4], [3, 2, 2]], [0, 0, 0, 1, 1, 2])
    assert pool["groups"] == [0]  # prompt 1's clips agree on everything, prompt 2 has one clip
    a, b, pa, pb, labels = T.generated_pairs(pool, 64, torch.Generator().manual_seed(0))
    ia, ib = (a[:, 0, 0, 0, 0] * 255).round().long(), (b[:, 0, 0, 0, 0] * 255).round().long()
    assert set(ia.tolist()) <= {0, 1, 2} and set(ib.tolist()) <= {0, 1, 2} and (ia != ib).all()
    assert pa == pb == ["p0"] * 64
    s = pool["scores"]
    assert torch.equal(labels, torch.sign(s[ia] - s[ib]))
    assert labels[(ia == 0) & (ib == 1)].tolist() == [[0.0, 1.0, 0.0]] * int(((ia == 0) & (ib == 1)).sum())
    a, b, pa, pb, labels = T.generated_pairs(pool, 64, torch.Generator().manual_seed(1), cross_prompt=1.0)
    assert any(x != y for x, y in zip(pa, pb))  # crossing pairs mix prompts
    ia, ib = (a[:, 0, 0, 0, 0] * 255).round().long(), (b[:, 0, 0, 0, 0] * 255).round().long()
    assert torch.equal(labels, torch.sign(s[ia] - s[ib]))


class _MeanScore:
    """A stand-in reward whose every head scores a clip by its mean pixel (so clip i scores i / 255)."""

    def raw_scores(self, clip, prompts):
        v = clip.mean(dim=(1, 2, 3, 4))
        return {"vq": v, "mq": -v, "ta": v}


def test_generated_auc_by_hand():
    # one prompt, clips scored 0, 1, 2 by the stand-in; grades VQ (2, 1, 0), MQ (2, 1, 0), TA (0, 0, 1)
    pool = _pool([[2, 2, 0], [1, 1, 0], [0, 0, 1]], [0, 0, 0])
    out = T.generated_auc(_MeanScore(), pool)
    assert out["generated_vq_auc"] == 0.0  # every better-graded clip scores lower
    assert out["generated_mq_auc"] == 1.0  # the MQ head scores -v: ordered like the grades
    assert out["generated_ta_auc"] == 1.0  # clip 2 (grade 1) above clips 0 and 1 (grade 0)
    assert out["generated_ta_auc_all"] == 1.0
    # two prompts: within-prompt pairs are (0,1) and (2,3); across the pool also (0,3), (2,1)
    pool = _pool([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], [0, 0, 1, 1])
    out = T.generated_auc(_MeanScore(), pool)
    assert out["generated_vq_auc"] == 0.0  # 0 below 1, 2 below 3
    assert out["generated_vq_auc_all"] == 0.25  # of 0>1, 0>3, 2>1, 2>3 the scores agree only on 2 > 1


def test_a_step_with_generated_pairs_adds_their_loss_on_every_axis(monkeypatch):
    torch.manual_seed(0)
    pool = _pool([[4, 2, 4], [0, -1, -1], [4, 1, 3], [4, 2, 4]], [0, 0, 1, 1])
    pool["videos"] = (torch.rand(4, 4, 3, 32, 32) * 255).to(torch.uint8)
    monkeypatch.setattr(T, "generated_pool", lambda *a, **k: pool)
    gen = T.GeneratedPairsConfig(generators=["stand-in"], share=0.5, cross_prompt=0.0)
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=8, attribute_loss=0.0,
                               generated=gen)
    method = T.RewardMethod(cfg, OptimConfig(lr=1e-3), ShapesWorld(WorldConfig(frames=4)), 0)
    g = method.data.generator
    state = g.get_state()

    class Capture:
        def optimize(self, opt, params, micro, scheduler=None):
            self.loss = micro(0)
            return {}

    ctx = Capture()
    method.train_step(1, ctx)
    g.set_state(state)
    b = T.make_pairs(method.world, "train", 4, g, cfg.tie_prob, tuple(cfg.axis_probs))
    a, bb, pa, pb, labels = T.generated_pairs(pool, 4, g, 0.0)
    with torch.no_grad():
        ra, rb = method.model.raw_scores(b.a, b.prompts), method.model.raw_scores(b.b, b.prompts)
        ga, gb = method.model.raw_scores(a, pa), method.model.raw_scores(bb, pb)
    corrupted = sum(float(T.bt_ties_loss(ra[x][i : i + 1], rb[x][i : i + 1], b.labels[x][i : i + 1], cfg.k))
                    for i, x in enumerate(b.axis))
    generated = sum(float(T.bt_ties_loss(ga[x], gb[x], labels[:, k], cfg.k).sum()) / 3 for k, x in enumerate(T.AXES))
    assert float(ctx.loss.detach()) == pytest.approx((corrupted + generated) / 8, rel=1e-5)
    assert generated > 0


def test_share_outside_its_range_is_one_line_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train-reward", "--config", "configs/reward_student_clips.yaml", f"out_dir={tmp_path}/r",
                           "reward.generated.share=2", "--quiet")
    assert code == 2 and "reward.generated.share" in err and "(0, 1]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work


def test_init_starts_from_the_named_weights_and_exports_their_architecture(tmp_path):
    from genrl.models.registry import load_model

    shipped = load_model("shapes-reward", kind="shapes_reward")
    cfg = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), init="shapes-reward")
    method = T.RewardMethod(cfg, OptimConfig(), ShapesWorld(WorldConfig(frames=4)), 0)
    assert method.model.cfg == shipped.cfg != cfg.model
    for (name, p), q in zip(method.model.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(p, q), name
    assert all(p.requires_grad for p in method.model.parameters())
