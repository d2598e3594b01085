"""Two gloo processes on CPU, launched the way users launch genrl (accelerate launch)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from genrl.models.registry import save_weights

from tiny import tiny_video_model

TINY_DMD = [
    "method=dmd", "dmd.batch_size=2", "dmd.critic_ratio=1", "dmd.num_samples=2", "world.frames=6",
    "streaming.local_frames=6", "streaming.sink_frames=3", "train.steps=2", "train.log_every=1", "train.checkpoint_every=1",
]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    m = tiny_video_model(seed=0)
    return str(save_weights(m, tmp_path_factory.mktemp("t") / "teacher.safetensors", "video_model", m.cfg))


def _launch(nproc, out, teacher):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = [f"out_dir={out}", f"teacher={teacher}", *TINY_DMD, "--quiet"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "genrl.cli", "distill", *args]
    else:
        beside = os.path.join(os.path.dirname(sys.executable), "accelerate")  # the venv's own launcher
        launcher = beside if os.path.exists(beside) else shutil.which("accelerate") or "accelerate"
        cmd = [launcher, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl.cli", "distill", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_two_process_dmd_run_trains_and_checkpoints_once(tmp_path, tiny_teacher):
    _launch(2, tmp_path / "run", tiny_teacher)
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # rank 0 logs, once per step
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000001", "step_0000002"]
    state = torch.load(run / "checkpoints" / "step_0000002" / "state.pt", weights_only=False)
    assert state["num_processes"] == 2  # really two gloo ranks, not two independent runs
    start = tiny_video_model(seed=0).state_dict()
    trained = load_file(str(run / "checkpoints" / "step_0000002" / "student.safetensors"))
    assert any(not torch.allclose(trained[k], start[k]) for k in trained if k.startswith("dit."))


def test_two_process_grpo_run_logs_once_and_evaluates_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    beside = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launcher = beside if os.path.exists(beside) else shutil.which("accelerate") or "accelerate"
    run = tmp_path / "grpo"
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "genrl.cli", "grpo", "--config", "configs/grpo_video_qa.yaml", f"out_dir={run}",
           "train.steps=2", "train.log_every=1", "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.eval_num=8",
           "eval_num=8", "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("eval on 8 test questions") == 1 and r.stdout.count("grpo run") == 1
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    state = torch.load(run / "checkpoints" / "step_0000002" / "state.pt", weights_only=False)
    assert state["num_processes"] == 2
    assert json.loads((run / "eval.json").read_text())["num"] == 8
