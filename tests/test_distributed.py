"""Two gloo processes on CPU, launched the way users launch genrl (accelerate launch)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from genrl.models.registry import save_weights

from tiny import accelerate_launch, tiny_video_model

TINY_DMD = [
    "method=dmd", "dmd.batch_size=2", "dmd.critic_ratio=1", "dmd.num_samples=2", "world.frames=6",
    "streaming.local_frames=6", "streaming.sink_frames=3", "train.steps=2", "train.log_every=1", "train.checkpoint_every=1",
]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    m = tiny_video_model(seed=0)
    return str(save_weights(m, tmp_path_factory.mktemp("t") / "teacher.safetensors", "video_model", m.cfg))


def _launch(nproc, out, teacher, *extra, quiet=True):
    """`genrl distill` of the tiny DMD recipe (plus ``extra`` overrides) in ``nproc`` processes; asserts exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = [f"out_dir={out}", f"teacher={teacher}", *TINY_DMD, *extra, *(["--quiet"] if quiet else [])]
    if nproc == 1:
        cmd = [sys.executable, "-m", "genrl.cli", "distill", *args]
    else:
        cmd = [*accelerate_launch(nproc), "distill", *args]
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
    run = tmp_path / "grpo"
    cmd = [*accelerate_launch(2), "grpo", "--config", "configs/grpo_video_qa.yaml", f"out_dir={run}",
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


# ------------------------------------------- data-parallel step == one process on the whole batch
class _RankAcc:
    """What StepContext needs of an Accelerator, for a gloo rank started by hand."""

    def __init__(self, world: int):
        self.num_processes = world

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _dp_step(rank: int, world: int, init: str, out: str, steps: int = 3) -> None:
    """Train a small MLP for ``steps`` with rank ``rank``'s share of a fixed batch; rank 0 saves the weights."""
    import torch.distributed as dist

    from genrl.train.trainer import StepContext, TrainConfig

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(steps, 12, 5, generator=g), torch.randn(steps, 12, 2, generator=g)
    ctx = StepContext(_RankAcc(world), TrainConfig(grad_accum=2, grad_clip=0.05))  # clipping is active
    losses = []
    for s in range(steps):
        mine = slice(rank * 12 // world, (rank + 1) * 12 // world)
        xs, ys = x[s, mine].chunk(2), y[s, mine].chunk(2)  # two equal micro-batches per process
        out_ = ctx.optimize(opt, model.parameters(), lambda i: ((model(xs[i]) - ys[i]) ** 2).mean())
        losses.append(out_["loss"])
    if rank == 0:
        torch.save({"state": model.state_dict(), "losses": losses}, out)
    if world > 1:
        dist.barrier()  # both ranks reach teardown together (one CI run had a rank abort in gloo without this)
        dist.destroy_process_group()


def test_two_process_data_parallel_steps_equal_one_process_on_the_concatenated_batch(tmp_path):
    import torch.multiprocessing as mp

    _dp_step(0, 1, "", str(tmp_path / "one.pt"))
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_dp_step, args=(2, init, str(tmp_path / "two.pt")), nprocs=2, join=True)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    for k, w in one["state"].items():
        torch.testing.assert_close(two["state"][k], w, rtol=1e-5, atol=1e-6)
    assert any((w - v).abs().max() > 1e-3 for w, v in zip(one["state"].values(), start.state_dict().values()))
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)  # the logged loss is the global mean


def test_two_process_resume_restores_each_process_own_data_stream(tmp_path, tiny_teacher):
    """2 steps straight == 1 step + resume under 2 processes (each rank gets back its own data stream);
    resuming that checkpoint with 1 process is refused in one line."""
    _launch(2, tmp_path / "straight", tiny_teacher)
    args = [a for a in TINY_DMD if not a.startswith("train.steps")]
    for steps in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [*accelerate_launch(2), "distill", f"out_dir={tmp_path / 'split'}",
               f"teacher={tiny_teacher}", *args, f"train.steps={steps}", "--quiet"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("student", "critic"):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoints" / "step_0000002" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    r = subprocess.run([sys.executable, "-m", "genrl.cli", "distill", f"out_dir={tmp_path / 'split'}",
                        f"teacher={tiny_teacher}", *args, "train.steps=3", "--quiet"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "written by 2 process(es) and this run has 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
