"""Method-level checks of the distillation and reward-model training steps, in process and fast.

The end-to-end CLI tests reach these methods too, but they are slow for a mutation run; these pin
the orchestration down with numbers: which optimiser steps how often, what the EMA becomes, what
a checkpoint holds and gets back, what gets exported, and what the reward recipe returns.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import rewards.training as T
from distill.dmd import DMDConfig, DMDMethod
from distill.stream_r1 import StreamR1Config, StreamR1Method
from genrl.methods.common import OptimConfig
from genrl.models.registry import save_weights
from genrl.train.trainer import StepContext, TrainConfig
from genrl.worlds.shapes import ShapesWorld, WorldConfig
from rewards.shapes import ShapesReward, ShapesRewardConfig

from tiny import OneProcess
from tiny import tiny_video_model


class _Recording(StepContext):
    """The real StepContext, recording which optimiser stepped and the loss it returned."""

    def __init__(self):
        super().__init__(OneProcess(), TrainConfig(grad_clip=1.0))
        self.calls = []

    def optimize(self, optimizer, params, micro_loss, scheduler=None):
        out = super().optimize(optimizer, params, micro_loss, scheduler)
        self.calls.append((optimizer, scheduler, out["loss"]))
        return out


def _models():
    teacher = tiny_video_model(seed=0)
    student = tiny_video_model(seed=1, streaming=True)
    return student, teacher


def _dmd(cls=DMDMethod, *head, **kw):
    student, teacher = _models()
    cfg = DMDConfig(**{"batch_size": 2, "critic_ratio": 3, "ema_decay": 0.75, "num_samples": 2, **kw})
    return cls(*head, cfg, student, teacher, ShapesWorld(WorldConfig(frames=6)), OptimConfig(lr=1e-3, warmup_steps=0),
               OptimConfig(lr=1e-3, warmup_steps=0), seed=0)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_dmd_step_is_critic_ratio_critic_updates_one_generator_update_then_the_ema():
    m = _dmd()
    student0, critic0, teacher0, ema0 = (_params(x) for x in (m.student, m.critic, m.teacher, m.ema.module))
    ctx = _Recording()
    out = m.train_step(0, ctx)
    opts = [c[0] for c in ctx.calls]
    assert opts == [m.critic_opt] * 3 + [m.opt]
    assert [c[1] for c in ctx.calls] == [m.critic_sched] * 3 + [m.sched]
    # the step's figures are the generator's loss and the last critic update's loss
    assert out["loss"] == ctx.calls[-1][2] and out["critic_loss"] == ctx.calls[-2][2]
    assert out["loss"] != out["critic_loss"] and out["dmd_grad_norm"] > 0
    assert {"loss", "grad_norm", "critic_loss", "critic_grad_norm", "dmd_grad_norm"} == set(out)
    assert out["grad_norm"] > 0 and out["critic_grad_norm"] > 0
    student1, critic1, teacher1, ema1 = (_params(x) for x in (m.student, m.critic, m.teacher, m.ema.module))
    dit = [k for k in student0 if k.startswith("dit.")]
    assert any(not torch.equal(student0[k], student1[k]) for k in dit)
    assert any(not torch.equal(critic0[k], critic1[k]) for k in dit)
    assert all(torch.equal(teacher0[k], teacher1[k]) for k in teacher0)
    for k in dit:  # EMA by hand: 0.75 * old + 0.25 * the updated student
        assert torch.allclose(ema1[k], 0.75 * ema0[k] + 0.25 * student1[k], atol=1e-6), k


def test_critic_ratio_one_still_steps_the_critic_before_the_generator():
    m = _dmd(critic_ratio=1)
    ctx = _Recording()
    m.train_step(0, ctx)
    assert [c[0] for c in ctx.calls] == [m.critic_opt, m.opt]


def test_dmd_roles_say_what_trains_what_is_frozen_and_what_is_never_cast():
    m = _dmd()
    roles = m.roles()
    assert {k: (r.trainable, r.cast) for k, r in roles.items()} == {
        "student": (True, True), "critic": (True, True), "teacher": (False, True), "ema": (False, False)}
    assert roles["student"].module is m.student and roles["critic"].module is m.critic
    assert roles["teacher"].module is m.teacher and roles["ema"].module is m.ema.module
    assert m.checkpoint_modules() == {"student": m.student, "critic": m.critic, "ema": m.ema.module}
    assert m.stateful() == {"optimizer": m.opt, "scheduler": m.sched, "critic_optimizer": m.critic_opt,
                            "critic_scheduler": m.critic_sched, "data": m.data}


def _snapshot(m):
    mods = {k: copy.deepcopy(v.state_dict()) for k, v in m.checkpoint_modules().items()}
    state = {k: copy.deepcopy(v.state_dict()) for k, v in m.stateful().items()}
    return mods, state, copy.deepcopy(m.extra_state())


def _restore(m, snap):
    mods, state, extra = snap
    for k, v in m.checkpoint_modules().items():
        v.load_state_dict(mods[k])
    for k, v in m.stateful().items():
        v.load_state_dict(state[k])
    m.load_extra_state(extra)


@pytest.mark.parametrize("kind", ["dmd", "stream_r1"])
def test_what_a_checkpoint_holds_is_enough_to_replay_a_step_exactly(kind, tmp_path):
    m = _dmd() if kind == "dmd" else _stream_r1(tmp_path)
    m.train_step(0, _Recording())
    snap = _snapshot(m)
    first = m.train_step(1, _Recording())
    after = _params(m.ema.module)
    # other state drifts on: another step, then back to the snapshot
    m.train_step(2, _Recording())
    _restore(m, snap)
    again = m.train_step(1, _Recording())
    assert first == again
    assert all(torch.equal(after[k], v) for k, v in _params(m.ema.module).items())


def test_dmd_exports_the_ema_and_samples_from_it(tmp_path):
    m = _dmd()
    m.train_step(0, _Recording())
    path = m.export(tmp_path)
    saved = load_file(str(path))
    ema = m.ema.module.state_dict()
    assert set(saved) == set(ema) and all(torch.equal(saved[k], ema[k].float()) for k in saved)
    assert any(not torch.equal(saved[k], m.student.state_dict()[k]) for k in saved if k.startswith("dit."))
    out = m.write_samples(7, tmp_path)
    assert (tmp_path / "step_0000007.gif").exists() and set(out) == {"sample_prompt_accuracy"}


def test_dmd_samples_come_from_the_ema(monkeypatch, tmp_path):
    import genrl.methods.common as C

    m, seen = _dmd(), {}
    monkeypatch.setattr(C, "sample_and_write", lambda *a: seen.update(args=a) or {"x": 1.0})
    assert m.write_samples(12, tmp_path) == {"x": 1.0}
    assert seen["args"] == (m.ema.module, m.world, 2, tmp_path / "step_0000012.gif")


def _reward_file(tmp_path):
    torch.manual_seed(0)
    rc = ShapesRewardConfig(width=8, dim=16)
    return str(save_weights(ShapesReward(rc), tmp_path / "reward.safetensors", "shapes_reward", rc))


def _stream_r1(tmp_path, **kw):
    sr1 = StreamR1Config(**{"reward_weights": _reward_file(tmp_path), "window": 3, **kw})
    return _dmd(StreamR1Method, sr1)


def test_stream_r1_builds_its_frozen_reward_a_bounded_history_and_a_frozen_role(tmp_path):
    m = _stream_r1(tmp_path)
    assert m.sr1.window == 3 and m.history.maxlen == 3 and len(m.history) == 0
    assert not m.reward.training and not any(p.requires_grad for p in m.reward.parameters())
    saved = load_file(m.sr1.reward_weights)
    assert all(torch.equal(v, saved[k]) for k, v in m.reward.state_dict().items() if k in saved)
    roles = m.roles()
    assert set(roles) == {"student", "critic", "teacher", "ema", "reward"}
    assert roles["reward"].module is m.reward and (roles["reward"].trainable, roles["reward"].cast) == (False, True)
    for step in range(4):  # each step appends the batch's mean z per axis; the window keeps the last 3
        out = m.train_step(step, _Recording())
        assert m.history[-1] == pytest.approx([out["reward_vq"], out["reward_mq"], out["reward_ta"]])
    assert len(m.history) == 3
    state = m.extra_state()
    assert state == {"history": list(m.history)}
    m.load_extra_state({"history": [[1.0, 2.0, 3.0]]})
    assert list(m.history) == [[1.0, 2.0, 3.0]] and m.history.maxlen == 3
    m.load_extra_state({})
    assert len(m.history) == 0


# ----------------------------------------------------------------- reward recipe
def _tiny_reward_cfg(tmp_path, steps=4):
    cfg = T.TrainRewardConfig(out_dir=str(tmp_path / "run"), world=WorldConfig(frames=4))
    cfg.reward = T.RewardMethodConfig(model=ShapesRewardConfig(width=8, dim=16), batch_size=8, eval_pairs=16)
    cfg.optim = OptimConfig(lr=3e-3, warmup_steps=0)
    cfg.train = TrainConfig(steps=steps, log_every=1, checkpoint_every=2, sample_every=2, seed=3)
    return cfg


def test_the_reward_recipe_trains_exports_a_calibrated_model_and_returns_the_last_accuracies(tmp_path):
    cfg = _tiny_reward_cfg(tmp_path)
    out = T.run(cfg, quiet=True)
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "vq_accuracy" in r][-1]
    assert last["step"] == 4 and out["is_main"] is True
    assert out["accuracy"] == {k: v for k, v in last.items() if "accuracy" in k}
    assert {"vq_accuracy", "mq_accuracy", "ta_accuracy"} <= set(out["accuracy"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_0000002", "step_0000004"]
    assert (run / "checkpoints" / "step_0000004" / "reward.safetensors").exists()
    # the export is calibrated on the val reference mix: z has mean 0 and std 1 there per axis
    from genrl.models.registry import load_model

    model = load_model(str(run / "model.safetensors"), "shapes_reward")
    clips, prompts = T.calibration_set(ShapesWorld(cfg.world))
    with torch.no_grad():
        z = model(clips, prompts).z
    for a in ("vq", "mq", "ta"):
        assert abs(float(z[a].mean())) < 1e-3 and float(z[a].std()) == pytest.approx(1.0, abs=2e-3)


def test_the_reward_recipe_resumes_to_the_same_weights(tmp_path):
    straight = _tiny_reward_cfg(tmp_path / "a")
    T.run(straight, quiet=True)
    half = _tiny_reward_cfg(tmp_path / "b", steps=2)
    T.run(half, quiet=True)
    T.run(_tiny_reward_cfg(tmp_path / "b"), quiet=True)
    a = load_file(str(tmp_path / "a" / "run" / "checkpoints" / "step_0000004" / "reward.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "checkpoints" / "step_0000004" / "reward.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_reward_method_checkpoints_its_model_optimiser_schedule_and_data_and_samples_pair_accuracy(tmp_path):
    m = T.build(_tiny_reward_cfg(tmp_path))
    assert m.checkpoint_modules() == {"reward": m.model}
    assert m.stateful() == {"optimizer": m.opt, "scheduler": m.sched, "data": m.data}
    out = m.write_samples(0, tmp_path)
    assert out == T.pair_accuracy(m.model, m.world, 16)


def test_the_calibration_set_is_uncorrupted_and_corrupted_val_clips_without_ties():
    world = ShapesWorld(WorldConfig(frames=4))
    clips, prompts = T.calibration_set(world, n=12, seed=5)
    ref = T.make_pairs(world, "val", 12, torch.Generator().manual_seed(5), tie_prob=0.0)
    assert torch.equal(clips, ref.a) and prompts == ref.prompts
    default, _ = T.calibration_set(world)
    assert default.shape[0] == 768
    again, _ = T.calibration_set(world, n=12)
    assert torch.equal(again, T.make_pairs(world, "val", 12, torch.Generator().manual_seed(0), tie_prob=0.0).a)


# ------------------------------------------------------------- DMD pieces, where mutants survived
def test_dmd_freezes_the_teacher_trains_only_the_critics_dit_and_uses_a_given_critic():
    student, teacher = _models()
    critic = copy.deepcopy(teacher)
    m = DMDMethod(DMDConfig(batch_size=2), student, teacher, ShapesWorld(WorldConfig(frames=6)), OptimConfig(),
                  OptimConfig(), seed=0, critic=critic)
    assert m.critic is critic and not any(p.requires_grad for p in m.teacher.parameters())
    assert all(p.requires_grad for p in m.critic.dit.parameters())
    assert not any(p.requires_grad for n, p in m.critic.named_parameters() if not n.startswith("dit."))
    assert all(p.requires_grad for p in m.student.dit.parameters())
    assert not any(p.requires_grad for n, p in m.student.named_parameters() if not n.startswith("dit."))
    assert not any(p.requires_grad for p in m.ema.module.parameters())


def test_the_unconditional_text_is_the_empty_prompt():
    m = _dmd()
    m._batch()
    want = m.teacher.encode_text([""])
    assert all(torch.equal(a, b) for a, b in zip(m.null, want))


def test_longer_rollouts_draw_whole_chunks_from_the_methods_own_generator():
    m = _dmd(max_rollout_frames=15)  # world 6 frames, chunks of 3: 2..5 chunks
    g = torch.Generator().manual_seed(11)
    draws = []
    for i in range(200):
        torch.manual_seed(i)  # the global stream must not matter
        draws.append(m.rollout_frames(g))
    ref = torch.Generator().manual_seed(11)
    assert draws == [3 * int(torch.randint(2, 6, (1,), generator=ref)) for _ in range(200)]
    assert set(draws) == {6, 9, 12, 15}
    plain = _dmd()  # max_rollout_frames 0: the world's length, and no draw from the generator
    g = torch.Generator().manual_seed(11)
    state = g.get_state()
    assert plain.rollout_frames(g) == 6 and torch.equal(g.get_state(), state)


def test_the_critic_learns_on_rollouts_without_a_graph():
    m = _dmd()
    seen = []
    predict = m.student.predict_x0_streaming
    m.student.predict_x0_streaming = lambda *a: (seen.append(torch.is_grad_enabled()), predict(*a))[1]
    m.critic_loss()
    assert seen and not any(seen)  # no pass of the critic's rollout records a graph


def test_the_generator_loss_is_reproducible_from_the_methods_generator_and_applies_both_weights(monkeypatch):
    import distill.dmd as D

    def run(global_seed, weights=None):
        m = _dmd()
        batch = m._batch
        m._batch = lambda: (*batch()[:4], 2)  # exit at step 2: the rollout re-noises twice per chunk
        torch.manual_seed(global_seed)
        captured = {}
        grad_fn = D.dmd_gradient

        def spy(x, x_real, x_fake):
            captured["x"], captured["g"] = x, grad_fn(x, x_real, x_fake)
            return captured["g"]

        monkeypatch.setattr(D, "dmd_gradient", spy)
        if weights is not None:
            m.loss_weights = lambda x, prompts: (weights(x), torch.tensor([0.5, 2.0]), {"w": 1.0})
        metrics = {}
        loss = m.generator_loss(metrics)
        monkeypatch.setattr(D, "dmd_gradient", grad_fn)
        return loss, captured, metrics

    a, ca, ma = run(0)
    b, cb, mb = run(123)
    assert torch.equal(a, b) and torch.equal(ca["g"], cb["g"])  # nothing drawn from the global stream
    g = ca["g"]
    assert ma["dmd_grad_norm"] == pytest.approx(float(sum(g[i].norm() for i in range(2)) / 2), rel=1e-6)
    W = lambda x: torch.linspace(0.5, 1.5, x[0].numel()).view(x.shape[1:]).expand_as(x)
    c, cc, mc = run(0, W)
    x, g = cc["x"], cc["g"]
    per = [0.5 * float((W(x)[i] * g[i] ** 2).mean()) for i in range(2)]
    assert float(c.detach()) == pytest.approx((0.5 * per[0] + 2.0 * per[1]) / 2, rel=1e-5) and mc["w"] == 1.0


def test_dmd_gradient_and_loss_with_small_norms_and_non_unit_weights():
    from distill.dmd import dmd_gradient, dmd_loss

    x = torch.tensor([[0.1, 0.3], [0.2, -0.2]])
    x_real = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # mean |x - x_real|: 0.2 and 0.2 (< 1)
    x_fake = torch.tensor([[0.05, 0.1], [-0.1, 0.2]])
    g = dmd_gradient(x, x_real, x_fake)
    assert torch.allclose(g, torch.tensor([[0.25, 0.5], [-0.5, 1.0]]))
    xr = x.clone().requires_grad_(True)
    W = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    loss = dmd_loss(xr, g, W, torch.tensor([1.0, 0.25]))
    per = [0.5 * (2.0 * 0.25**2 + 0.5 * 0.5**2) / 2, 0.25 * 0.5 * (1.0 * 0.5**2 + 3.0 * 1.0**2) / 2]
    assert float(loss) == pytest.approx(sum(per) / 2)


def test_the_reward_recipe_writes_its_config_into_the_run(tmp_path):
    import yaml

    cfg = _tiny_reward_cfg(tmp_path, steps=2)
    T.run(cfg, quiet=True)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["reward"]["batch_size"] == 8 and saved["train"]["steps"] == 2 and saved["world"]["frames"] == 4


def test_the_reward_recipe_is_quiet_only_when_asked(tmp_path, capfd):
    T.run(_tiny_reward_cfg(tmp_path / "q", steps=1), quiet=True)
    quiet = capfd.readouterr()
    T.run(_tiny_reward_cfg(tmp_path / "v", steps=1))
    loud = capfd.readouterr()
    assert quiet.err.strip() == "" and quiet.out.strip() == ""
    assert "reward" in (loud.err + loud.out) and len(loud.err + loud.out) > 20


def test_longer_rollout_batches_are_drawn_from_the_methods_generator_only():
    def batch(global_seed):
        m = _dmd(max_rollout_frames=15)
        torch.manual_seed(global_seed)
        return [m._batch()[3].shape[1] for _ in range(12)]

    a = batch(0)
    assert a == batch(99) and len(set(a)) > 1  # lengths vary, and not with the global stream
