"""kill -9 at chosen moments of `distill`, `pretrain` and `grpo` (mid-step, while a checkpoint's weights,
state or manifest are written, between the rename and the pointer, before rotation), then a plain re-run:
the final weights equal an uninterrupted run's bit for bit and metrics.jsonl holds each step once.

The kill comes from inside the process (a wrapper patches one function to SIGKILL itself on its n-th
call), so the moment is exact and nothing in genrl carries a test hook."""

import json
import os
import subprocess
import sys

import pytest

from test_cli_paths import AE, _same

KILLER = r"""
import os, signal, sys, importlib
target, nth = sys.argv[1], int(sys.argv[2])
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
real, calls = getattr(owner, name), [0]
def killing(*a, **k):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
setattr(owner, name, killing)
from genrl.cli.main import main
sys.exit(main(sys.argv[3:]))
"""

MOMENTS = [
    ("genrl.train.trainer:StepContext.optimize", 3),  # mid-step: step 3's update never happens
    ("genrl.train.checkpoint:save_file", 2),  # while the 2nd checkpoint's weights are written
    ("genrl.train.checkpoint:_sha256", 2),  # while its manifest is computed
    ("genrl.train.checkpoint:_write_atomic_text", 2),  # renamed into place, pointer not yet moved
    ("genrl.train.checkpoint:_rotate", 2),  # pointer moved, older checkpoints not yet rotated
]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _cli(args, killer=None):
    cmd = [sys.executable, "-c", KILLER, *killer, *args] if killer else [sys.executable, "-m", "genrl.cli", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _check(run, straight, weights):
    assert _same(run / weights, straight / weights)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def _kill_and_resume(tmp_path, args, weights):
    straight = tmp_path / "straight"
    r = _cli([*args, f"out_dir={straight}"])
    assert r.returncode == 0, r.stderr[-2000:]
    for i, (target, nth) in enumerate(MOMENTS):
        run = tmp_path / f"killed_{i}"
        r = _cli([*args, f"out_dir={run}"], killer=(target, str(nth)))
        assert r.returncode == -9, (target, r.returncode, r.stderr[-2000:])  # really killed there
        r = _cli([*args, f"out_dir={run}"])
        assert r.returncode == 0, (target, r.stderr[-2000:])
        _check(run, straight, weights)


def test_pretrain_survives_kill_9_at_every_moment(tmp_path):
    args = ["pretrain", *AE[:-1], "train.steps=4", "train.checkpoint_every=1", "--quiet"]
    _kill_and_resume(tmp_path, args, "model.safetensors")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from genrl.models.registry import save_weights

    from tiny import tiny_video_model

    m = tiny_video_model(seed=0)
    return str(save_weights(m, tmp_path_factory.mktemp("t") / "teacher.safetensors", "video_model", m.cfg))


def test_distill_survives_kill_9_at_every_moment(tmp_path, tiny_teacher):
    from test_distill_runs import TINY

    args = ["distill", f"teacher={tiny_teacher}", "method=dmd", "train.steps=4", *TINY, "eval_num=0"]
    _kill_and_resume(tmp_path, args, "model.safetensors")


def test_grpo_survives_kill_9_at_every_moment(tmp_path):
    args = ["grpo", "--config", "configs/grpo_video_qa.yaml", "train.steps=4", "train.checkpoint_every=1",
            "train.log_every=1", "train.sample_every=0", "grpo.prompts_per_step=2", "grpo.group_size=3",
            "grpo.eval_num=4", "eval_num=4", "grpo.max_new_tokens=12", "--quiet"]
    _kill_and_resume(tmp_path, args, "model.safetensors")
