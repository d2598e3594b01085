"""A streaming student's denoising steps per chunk: `--steps` for students, what eval records, how compare pairs."""

import json

import pytest
import torch

from genrl.generation import SamplingConfig, generate, nfe_per_frame, parse_timesteps, student_timesteps
from genrl.models.registry import load_model

CAPTION = "a large red circle moving left slowly on a dark background"


def test_student_timesteps_are_evenly_spaced_and_four_is_the_trained_schedule():
    assert student_timesteps(4) == [1000.0, 750.0, 500.0, 250.0]
    assert student_timesteps(1) == [1000.0]
    assert student_timesteps(8)[1] == 875.0 and len(student_timesteps(8)) == 8
    with pytest.raises(ValueError):
        student_timesteps(0)
    student = load_model("shapes-student-dmd")
    assert [float(t) for t in student.cfg.streaming.timesteps] == student_timesteps(4)
    # the trained schedule asked for by number gives the same pixels as asking for nothing
    a = generate(student, [CAPTION], 6, SamplingConfig(), seed=5).videos
    b = generate(student, [CAPTION], 6, SamplingConfig(student_steps=4), seed=5).videos
    assert torch.equal(a, b)


def _sigmas_seen(student, monkeypatch) -> list[float]:
    """The noise level of every x0-prediction the student makes from now on (rounded), in order."""
    seen: list[float] = []
    real = type(student).predict_x0_streaming

    def spy(self, xt, sigma, text, cache):
        seen.append(round(float(sigma), 6))
        return real(self, xt, sigma, text, cache)

    monkeypatch.setattr(type(student), "predict_x0_streaming", spy)
    return seen


def test_student_steps_run_that_many_predictions_per_chunk_at_the_shifted_levels(monkeypatch):
    student = load_model("shapes-student-dmd")
    seen = _sigmas_seen(student, monkeypatch)
    frames = student.pixel_frames(2 * student.cfg.dit.chunk_frames)  # two chunks
    out = generate(student, [CAPTION], frames, SamplingConfig(student_steps=2), seed=0)
    k = student.cfg.shift
    by_hand = [1.0, round(k * 0.5 / (1 + (k - 1) * 0.5), 6)]  # t = 1000, 500 after the time shift
    assert seen == by_hand * 2
    assert out.nfe_per_frame == 3.0 and nfe_per_frame(student, SamplingConfig()) == 5.0


def test_first_chunk_steps_change_the_first_chunk_alone(monkeypatch):
    student = load_model("shapes-student-dmd")
    frames = student.pixel_frames(2 * student.cfg.dit.chunk_frames)
    same = generate(student, [CAPTION], frames, SamplingConfig(first_chunk_steps=4), seed=2).videos
    assert torch.equal(same, generate(student, [CAPTION], frames, SamplingConfig(), seed=2).videos)
    seen = _sigmas_seen(student, monkeypatch)
    out = generate(student, [CAPTION], frames, SamplingConfig(first_chunk_steps=8), seed=2)
    trained = [round(s, 6) for s in student.streaming_sigmas()[:-1]]
    assert len(seen) == 8 + 4 and seen[8:] == trained  # the second chunk runs the trained 4
    assert seen[:8:2] == trained  # 8 evenly spaced steps contain the trained 4 at every other step
    assert out.nfe_per_frame == 5.0  # a long stream's rate: the first chunk is paid once


def test_a_schedule_given_one_by_one_runs_those_levels(monkeypatch):
    assert parse_timesteps("1000, 625,375,125") == [1000.0, 625.0, 375.0, 125.0]
    for bad, why in (("900,500", "must be 1000"), ("1000,500,600", "fall strictly"), ("1000,500,0", "above 0"),
                     ("1000,x", "comma-separated"), (" , ", "no timesteps")):
        with pytest.raises(ValueError, match=why):
            parse_timesteps(bad)
    student = load_model("shapes-student-dmd")
    frames = student.pixel_frames(2 * student.cfg.dit.chunk_frames)
    trained = generate(student, [CAPTION], frames, SamplingConfig(), seed=3).videos
    same = SamplingConfig(student_schedule=[1000.0, 750.0, 500.0, 250.0])
    assert torch.equal(trained, generate(student, [CAPTION], frames, same, seed=3).videos)
    seen = _sigmas_seen(student, monkeypatch)
    out = generate(student, [CAPTION], frames, SamplingConfig(student_schedule=[1000.0, 625.0, 375.0, 125.0]), seed=3)
    k = student.cfg.shift
    by_hand = [round(k * s / (1 + (k - 1) * s), 6) for s in (1.0, 0.625, 0.375, 0.125)]  # 1, 0.8333, 0.6429, 0.3
    assert seen == by_hand * 2 and abs(by_hand[-1] - 0.3) < 1e-6
    assert out.nfe_per_frame == 5.0 and not torch.equal(out.videos, trained)
    with pytest.raises(ValueError, match="not both"):
        generate(student, [CAPTION], frames, SamplingConfig(student_steps=2, student_schedule=[1000.0]), seed=3)


def test_timesteps_on_the_command_line(run_cli, tmp_path):
    code, out, err = run_cli("eval", "--model", "shapes-student-dmd", "--num", "2", "--frames", "6", "--timesteps",
                             "1000,500", "--reward", "none", "--out", str(tmp_path / "t.json"), "--quiet")
    assert code == 0 and "nfe/frame=3" in out, err
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["steps"] == 2 and rec["timesteps"] == [1000.0, 500.0]
    for args, why in ((["--model", "shapes-student-dmd", "--timesteps", "1000,500", "--steps", "3"], "not both"),
                      (["--model", "shapes-student-dmd", "--timesteps", "800,500"], "must be 1000"),
                      (["--model", "shapes-teacher", "--timesteps", "1000,500"], "for streaming students")):
        code, _, err = run_cli("sample", *args, "--prompt", CAPTION, "--out", str(tmp_path / "x.gif"))
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err


def test_sample_and_eval_take_steps_for_a_student_and_refuse_guidance(run_cli, tmp_path):
    code, out, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", CAPTION, "--frames", "6",
                             "--steps", "2", "--out", str(tmp_path / "x.gif"))
    assert code == 0 and "3 NFE/frame" in out, err
    code, _, err = run_cli("sample", "--model", "shapes-student-dmd", "--prompt", CAPTION, "--guidance", "3",
                           "--out", str(tmp_path / "y.gif"))
    assert code == 2 and "--guidance is for teachers" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("eval", "--model", "shapes-student-dmd", "--num", "2", "--frames", "6", "--steps", "2",
                             "--reward", "none", "--out", str(tmp_path / "s.json"), "--quiet")
    assert code == 0 and "nfe/frame=3" in out, err
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["steps"] == 2 and rec["timesteps"] == [1000.0, 500.0] and rec["guidance"] is None
    code, out, err = run_cli("eval", "--model", "shapes-student-dmd", "--num", "2", "--frames", "6", "--first-steps", "8",
                             "--reward", "none", "--out", str(tmp_path / "f.json"), "--quiet")
    assert code == 0, err
    rec = json.loads((tmp_path / "f.json").read_text())
    assert rec["timesteps"] == [1000.0, 750.0, 500.0, 250.0] and len(rec["first_chunk_timesteps"]) == 8
    code, _, err = run_cli("sample", "--model", "shapes-teacher", "--prompt", CAPTION, "--first-steps", "8",
                           "--out", str(tmp_path / "z.gif"))
    assert code == 2 and "--first-steps is for streaming students" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval", "--task", "qa", "--model", "shapes-vlm", "--steps", "3")
    assert code == 2 and "--steps is for --task video" in err and len(err.strip().splitlines()) == 1


def test_a_student_pairs_with_its_teacher_though_their_sampling_differs(run_cli, tmp_path):
    """compare pairs on prompts and sampling seed; steps and guidance are part of what is compared."""
    for name, model in (("t", "shapes-teacher"), ("s", "shapes-student-dmd")):
        code, _, err = run_cli("eval", "--model", model, "--num", "2", "--frames", "3", "--steps", "2",
                               "--reward", "none", "--out", str(tmp_path / f"{name}.json"), "--quiet")
        assert code == 0, err
    t, s = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ts")
    assert (t["steps"], t["guidance"]) == (2, 4.0) and (s["steps"], s["guidance"]) == (2, None)
    assert t["per_video"]["jerk"] == [None, None]  # 3 frames: too short for the probe to read motion
    code, out, err = run_cli("compare", str(tmp_path / "t.json"), "--vs", str(tmp_path / "s.json"))
    assert code == 0 and "over 2 paired videos" in out, err
    assert "prompt_accuracy" in out and "motion_jerk" not in out  # no pair has a jerk: no row, no crash
