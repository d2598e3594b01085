import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from genrl.models.autoencoder import Autoencoder, AutoencoderConfig
from genrl.models.registry import save_weights
from genrl.train.trainer import Method, Trainer, TrainConfig

TINY = [
    "flow.model.dit.dim=24", "flow.model.dit.depth=1", "flow.model.dit.heads=2", "flow.model.dit.text_dim=16",
    "flow.model.dit.mlp_ratio=1.0", "flow.model.text.dim=16", "flow.model.text.layers=1", "flow.model.text.heads=2",
    "flow.model.autoencoder.width=8", "flow.batch_size=2", "flow.num_samples=2", "flow.sample_steps=2",
    "world.frames=3", "train.log_every=1", "train.checkpoint_every=2", "optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    return str(save_weights(Autoencoder(AutoencoderConfig(width=8)), path, "autoencoder", AutoencoderConfig(width=8)))


def _pretrain(run_cli, out, steps, ae, *extra):
    code, stdout, err = run_cli("pretrain", f"out_dir={out}", f"train.steps={steps}", f"flow.autoencoder={ae}", *TINY, *extra, "--quiet")
    assert code == 0, err
    return stdout


def test_resume_is_bit_identical(run_cli, tmp_path, tiny_autoencoder):
    _pretrain(run_cli, tmp_path / "a", 5, tiny_autoencoder, "train.grad_accum=2")
    _pretrain(run_cli, tmp_path / "b", 3, tiny_autoencoder, "train.grad_accum=2")  # stopped at k = 3
    _pretrain(run_cli, tmp_path / "b", 5, tiny_autoencoder, "train.grad_accum=2")  # resumed to k + m = 5
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000005" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_0000005" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000005" / "ema.safetensors"))
    eb = load_file(str(tmp_path / "b" / "checkpoints" / "step_0000005" / "ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]


def test_training_changes_parameters_and_writes_a_run_folder(run_cli, tmp_path, tiny_autoencoder):
    _pretrain(run_cli, tmp_path / "r", 2, tiny_autoencoder)
    run = tmp_path / "r"
    assert (run / "config.yaml").exists() and (run / "model.safetensors").exists()
    assert (run / "samples" / "step_0000002.gif").exists()
    first = load_file(str(run / "checkpoints" / "step_0000002" / "model.safetensors"))
    torch.manual_seed(0)
    from genrl.models.registry import load_model

    exported = load_model(str(run / "model.safetensors"), kind="video_model")
    assert exported.dit.head.weight.abs().sum() > 0  # the zero-initialised head has moved
    assert any(not torch.equal(first[k], v.to(first[k].dtype)) for k, v in exported.state_dict().items() if k in first)


def test_flow_init_starts_from_given_weights_and_refuses_other_architectures(run_cli, tmp_path, tiny_autoencoder):
    from genrl.methods.common import OptimConfig
    from genrl.methods.flow import FlowMethod, FlowMethodConfig
    from genrl.models.registry import load_model
    from genrl.worlds.shapes import ShapesWorld, WorldConfig

    _pretrain(run_cli, tmp_path / "r", 2, tiny_autoencoder)
    src = load_model(str(tmp_path / "r"), kind="video_model")
    cfg = FlowMethodConfig(model=src.cfg, autoencoder=tiny_autoencoder, init=str(tmp_path / "r"))
    method = FlowMethod(cfg, OptimConfig(), ShapesWorld(WorldConfig(frames=3)), seed=0)
    got, want = method.model.state_dict(), src.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)  # dit, text encoder and autoencoder all carried over
    assert all(torch.equal(v, got[k]) for k, v in method.ema.module.state_dict().items())  # EMA starts there too
    code, _, err = run_cli("pretrain", f"out_dir={tmp_path / 'x'}", "train.steps=1", f"flow.autoencoder={tiny_autoencoder}",
                           *TINY, "flow.model.dit.dim=32", f"flow.init={tmp_path / 'r'}", "--quiet")
    assert code == 2 and "architecture differs from flow.model" in err and "Traceback" not in err


def test_train_shift_sets_the_training_noise_levels_only(monkeypatch, tiny_autoencoder):
    from genrl import schedulers as fm
    from genrl.methods.common import OptimConfig
    from genrl.methods.flow import FlowMethod, FlowMethodConfig
    from genrl.models.video_model import VideoModelConfig
    from genrl.worlds.shapes import ShapesWorld, WorldConfig

    seen, real = [], fm.sample_training_sigma
    monkeypatch.setattr(fm, "sample_training_sigma", lambda n, shift, g=None: seen.append(shift) or real(n, shift, g))
    mcfg = VideoModelConfig(shift=3.0)
    mcfg.dit.dim, mcfg.dit.depth, mcfg.dit.heads, mcfg.dit.text_dim = 24, 1, 2, 16
    mcfg.text.dim, mcfg.text.layers, mcfg.text.heads, mcfg.autoencoder.width = 16, 1, 2, 8
    world = ShapesWorld(WorldConfig(frames=3))
    video, captions, _ = world.random_clips("train", 2, torch.Generator().manual_seed(0))
    for train_shift, want in ((None, 3.0), (1.0, 1.0)):
        m = FlowMethod(FlowMethodConfig(model=mcfg, autoencoder=tiny_autoencoder, train_shift=train_shift),
                       OptimConfig(), world, seed=0)
        m.flow_loss(m.model, video, captions, torch.Generator().manual_seed(0))
        assert seen[-1] == want and m.model.cfg.shift == 3.0  # sampling keeps the model's shift


def test_a_run_whose_only_checkpoint_is_damaged_is_refused(run_cli, tmp_path, tiny_autoencoder):
    _pretrain(run_cli, tmp_path / "d", 2, tiny_autoencoder)
    state = tmp_path / "d" / "checkpoints" / "step_0000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    code, _, err = run_cli("pretrain", f"out_dir={tmp_path / 'd'}", "train.steps=3", f"flow.autoencoder={tiny_autoencoder}", *TINY, "--quiet")
    assert code == 2 and "no intact checkpoint" in err and "state.pt has" in err


def test_interrupted_save_leaves_previous_checkpoint_loadable(tmp_path):
    from genrl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    root = tmp_path / "ck"
    save_checkpoint(root, 1, {"m": {"w": torch.ones(2)}}, {"step": 1})
    # a crash mid-write leaves only a temporary folder behind
    (root / ".tmp_step_0000002").mkdir()
    (root / ".tmp_step_0000002" / "m.safetensors").write_bytes(b"half")
    step, weights, _ = load_checkpoint(latest_checkpoint(root))
    assert step == 1 and torch.equal(weights["m"]["w"], torch.ones(2))


def test_lownoise_teacher_stage_changes_only_the_training_schedule():
    """The second teacher stage keeps the architecture and sampling shift and moves training to low noise."""
    from genrl.cli.pretrain import PretrainConfig
    from genrl.config import load_config

    base = load_config(PretrainConfig, "configs/teacher_shapes.yaml")
    stage = load_config(PretrainConfig, "configs/teacher_shapes_lownoise.yaml")
    assert stage.flow.model == base.flow.model and stage.flow.model.shift == 3.0
    assert (base.flow.train_shift, stage.flow.train_shift) == (None, 1.0)
    assert stage.flow.init == "runs/teacher/model.safetensors" and stage.optim.lr < base.optim.lr


VALUES = [0.2, 0.5, 0.4, 0.5, 0.3]


class Scripted(Method):
    """One weight trained towards 3; its validation figure after step s is VALUES[s - 1]."""

    name = "scripted"
    val_key = "val_score"

    def __init__(self):
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.step = 0

    def train_step(self, step, ctx):
        self.step = step
        return ctx.optimize(self.opt, self.model.parameters(), lambda i: (self.model.weight - 3.0).pow(2).sum())

    def checkpoint_modules(self):
        return {"model": self.model}

    def stateful(self):
        return {"optimizer": self.opt}

    def export(self, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        save_file({"w": self.model.weight.detach().clone()}, str(run_dir / "model.safetensors"))
        return run_dir / "model.safetensors"

    def validate(self, num):
        return {"val_score": VALUES[self.step - 1], "val_num": float(num)}


def _fit_scripted(run_dir, steps):
    cfg = TrainConfig(steps=steps, log_every=1, checkpoint_every=1, keep_checkpoints=10, val_every=1, val_num=7)
    Trainer(cfg, Scripted(), run_dir, quiet=True).fit()


def test_validation_exports_the_first_best_step_and_a_resumed_run_keeps_it(tmp_path):
    _fit_scripted(tmp_path / "a", 5)
    best = json.loads((tmp_path / "a" / "best" / "best.json").read_text())
    # 0.5 first at step 2; the tie at step 4 does not replace it
    assert (best["step"], best["key"], best["value"]) == (2, "val_score", 0.5) and best["metrics"]["val_num"] == 7
    step2 = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000002" / "model.safetensors"))["weight"]
    last = load_file(str(tmp_path / "a" / "model.safetensors"))["w"]
    exported = load_file(str(tmp_path / "a" / "best" / "model.safetensors"))["w"]
    assert torch.equal(exported, step2) and not torch.equal(exported, last)
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_score"] for r in rows if "val_score" in r] == VALUES
    # stopped after step 3 and resumed: the best so far comes back from the checkpoint, not from a re-count
    _fit_scripted(tmp_path / "b", 3)
    _fit_scripted(tmp_path / "b", 5)
    assert json.loads((tmp_path / "b" / "best" / "best.json").read_text()) == best
    assert not (tmp_path / "b" / ".best.tmp").exists() and not (tmp_path / "b" / ".best.old").exists()


def test_val_every_on_a_method_without_validation_is_one_usage_line(run_cli, tmp_path, tiny_autoencoder):
    code, out, err = run_cli("pretrain", f"out_dir={tmp_path / 'v'}", "train.steps=1", "train.val_every=1",
                             f"flow.autoencoder={tiny_autoencoder}", *TINY, "--quiet")
    assert code == 2 and "train.val_every" in err and "valid: 0" in err and "Traceback" not in err
