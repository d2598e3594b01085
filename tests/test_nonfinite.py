"""Nothing silent: a non-finite step is skipped and counted, a run that stays non-finite stops with exit
code 1, and no checkpoint or export ever holds NaN."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genrl.errors import TrainingDiverged
from genrl.train.trainer import StepContext, TrainConfig

from test_distill_runs import TINY, assets, _distill  # noqa: F401 - the tiny teacher fixture
from tiny import OneProcess


def test_a_nonfinite_step_is_skipped_and_leaves_weights_and_optimiser_alone():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    ctx = StepContext(OneProcess(), TrainConfig(grad_clip=1.0))
    out = ctx.optimize(opt, [w], lambda i: (w * float("nan")).sum())
    assert out["skipped"] == 1.0 and ctx.step_was_bad and torch.equal(w.detach(), torch.ones(3))
    assert w.grad is None and not opt.state  # no step taken, no moments started
    ctx.step_was_bad = False
    out = ctx.optimize(opt, [w], lambda i: (w**2).sum())
    assert "skipped" not in out and not ctx.step_was_bad and float(w.detach().sum()) < 3.0


def test_a_run_that_stays_nonfinite_stops_with_exit_code_1_and_writes_no_nan(run_cli, tmp_path, assets):
    teacher, _ = assets
    out = tmp_path / "nan"
    code, _, err = run_cli("distill", f"out_dir={out}", f"teacher={teacher}", *TINY, "method=dmd", "train.steps=6",
                           "optim.lr=1e12", "optim.warmup_steps=0", "critic_optim.lr=1e12", "critic_optim.warmup_steps=0",
                           "train.grad_clip=0")
    assert code == 1, err
    assert "non-finite for 3 steps in a row" in err and len(err.strip().splitlines()) == 1
    assert not (out / "model.safetensors").exists()
    for ckpt in (out / "checkpoints").glob("step_*"):
        for f in ckpt.glob("*.safetensors"):
            assert all(torch.isfinite(v).all() for v in load_file(str(f)).values() if v.is_floating_point()), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("skipped_steps" in r for r in rows)


def test_nonfinite_weights_are_never_written(tmp_path):
    from genrl.models.registry import save_weights

    from tiny import tiny_video_model

    m = tiny_video_model()
    with torch.no_grad():
        m.dit.head.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="dit.head.bias"):
        save_weights(m, tmp_path / "x.safetensors", "video_model", m.cfg)
    assert not (tmp_path / "x.safetensors").exists()


def test_sft_that_goes_nonfinite_stops_with_exit_code_1_and_exports_nothing(run_cli, tmp_path):
    out = tmp_path / "sft"
    code, _, err = run_cli("sft", "--config", "configs/sft_video_qa.yaml", f"out_dir={out}", "sft.size=debug",
                           "sft.batch_size=4", "sft.eval_num=4", "eval_num=4", "train.steps=8", "optim.lr=1e12",
                           "optim.warmup_steps=0", "train.grad_clip=0", "-q")
    assert code == 1 and "non-finite for 3 steps in a row" in err, err
    assert not (out / "model.safetensors").exists()
