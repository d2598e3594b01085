"""Recovery: resume takes the newest intact checkpoint, never restarts over good ones, keeps metrics.jsonl
one row per step, and rotation never deletes the last intact checkpoint."""

import json

import torch

from genrl.train.checkpoint import checkpoint_problem, load_checkpoint, resumable_checkpoint, save_checkpoint

from test_cli_paths import AE, _same

STEPS = ["train.checkpoint_every=2", "train.keep_checkpoints=3"]


def _run(run_cli, out, steps):
    return run_cli("pretrain", f"out_dir={out}", f"train.steps={steps}", *AE, *STEPS)


def _logged_steps(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]  # one row per training step


def test_a_damaged_or_missing_newest_checkpoint_falls_back_to_the_previous_intact_one(run_cli, tmp_path):
    assert _run(run_cli, tmp_path / "straight", 5)[0] == 0
    for damage in ("truncate", "remove"):
        run = tmp_path / damage
        assert _run(run_cli, run, 4)[0] == 0  # checkpoints at steps 2 and 4
        newest = run / "checkpoints" / "step_0000004"
        if damage == "truncate":
            w = newest / "autoencoder.safetensors"
            w.write_bytes(w.read_bytes()[:-100])
        else:
            import shutil

            shutil.rmtree(newest)
        code, _, err = _run(run_cli, run, 5)
        assert code == 0, err
        warning = [l for l in err.splitlines() if l.startswith("warning:")]
        if damage == "truncate":
            assert len(warning) == 1 and "skipping damaged checkpoint" in warning[0] and "step_0000004" in warning[0]
        else:
            assert len(warning) == 1 and "names step_0000004, which is missing" in warning[0]
        assert _same(run / "model.safetensors", tmp_path / "straight" / "model.safetensors")  # 2 + 3 steps == 5
        assert _logged_steps(run) == [1, 2, 3, 4, 5]  # the replayed steps 3, 4 are logged once


def test_no_intact_checkpoint_stops_instead_of_restarting_over_the_run(run_cli, tmp_path):
    run = tmp_path / "r"
    assert _run(run_cli, run, 2)[0] == 0
    (run / "checkpoints" / "step_0000002" / "manifest.json").write_text('{"step": 2, "fi')
    before = (run / "model.safetensors").read_bytes()
    code, _, err = _run(run_cli, run, 4)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no intact checkpoint to resume from" in err and "manifest.json is damaged" in err
    assert (run / "model.safetensors").read_bytes() == before and _logged_steps(run) == [1, 2]


def test_a_partial_metrics_line_is_dropped_with_a_warning_on_resume(run_cli, tmp_path):
    run = tmp_path / "m"
    assert _run(run_cli, run, 2)[0] == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')  # a kill during a write
    from genrl.train.trainer import read_metrics

    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]  # reports still read the file
    code, _, err = _run(run_cli, run, 3)
    assert code == 0 and "dropped 1 partial line" in err
    assert _logged_steps(run) == [1, 2, 3]


def test_rotation_counts_only_intact_checkpoints(tmp_path):
    root = tmp_path / "ck"
    for step in (1, 2):
        save_checkpoint(root, step, {"m": {"w": torch.full((4,), float(step))}}, {"step": step}, keep=2)
    (root / "step_0000002" / "m.safetensors").write_bytes(b"broken")
    save_checkpoint(root, 3, {"m": {"w": torch.full((4,), 3.0)}}, {"step": 3}, keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000001", "step_0000002", "step_0000003"]
    save_checkpoint(root, 4, {"m": {"w": torch.full((4,), 4.0)}}, {"step": 4}, keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000003", "step_0000004"]
    (root / "step_0000004" / "state.pt").write_bytes(b"x")
    path, warnings = resumable_checkpoint(root)
    assert path.name == "step_0000003" and len(warnings) == 1 and "state.pt" in warnings[0]


def test_a_checkpoint_read_mapped_holds_the_same_tensors_and_writes_nothing_back(tmp_path):
    """A sharded run resumes from the files mapped into memory (each process reads only its shards): the same
    tensors, of every dtype and shape, as reading them whole; writing into one leaves the files as they were."""
    g = torch.Generator().manual_seed(0)
    weights = {"policy": {"w": torch.randn(5, 3, generator=g), "h": torch.randn(7, generator=g).bfloat16(),
                          "ids": torch.arange(6).view(2, 3), "none": torch.empty(0, 4), "scalar": torch.tensor(2.5),
                          "mask": torch.rand(9, generator=g) > 0.5}, "heads": {"w": torch.randn(2, 2, generator=g)}}
    state = {"stateful": {"optimizer": {"state": {"w": {"exp_avg": torch.randn(5, 3, generator=g)}}}}, "step": 3}
    path = save_checkpoint(tmp_path / "ck", 3, weights, state)
    step, mapped_weights, mapped_state = load_checkpoint(path, mapped=True)
    assert step == 3 and load_checkpoint(path)[0] == 3
    for module, sd in weights.items():
        assert sorted(mapped_weights[module]) == sorted(sd)
        for k, t in sd.items():
            got = mapped_weights[module][k]
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), (module, k)
    moment = mapped_state["stateful"]["optimizer"]["state"]["w"]["exp_avg"]
    assert torch.equal(moment, state["stateful"]["optimizer"]["state"]["w"]["exp_avg"])
    mapped_weights["policy"]["w"].add_(1.0)  # copy-on-write: the file keeps its bytes
    moment.add_(1.0)
    assert checkpoint_problem(path) is None and torch.equal(load_checkpoint(path)[1]["policy"]["w"], weights["policy"]["w"])
