"""`genrl export`: one model cast to a dtype, or the uniform weight average of several."""

import torch
from safetensors.torch import load_file
from tiny import tiny_video_model

from genrl.models.registry import load_model, save_weights


def _save(tmp_path, name, model):
    return str(save_weights(model, tmp_path / name, "video_model", model.cfg))


def test_average_of_three_models_is_their_mean_and_loads(run_cli, tmp_path):
    models = [tiny_video_model(seed=s) for s in (0, 1, 2)]
    paths = [_save(tmp_path, f"m{s}.safetensors", m) for s, m in enumerate(models)]
    out = tmp_path / "soup.safetensors"
    code, stdout, err = run_cli("export", *paths, "--out", str(out))
    assert code == 0, err
    assert "the average of" in stdout
    soup = load_file(str(out))
    states = [m.state_dict() for m in models]
    key = next(k for k in soup if k.startswith("dit.") and soup[k].ndim == 2)  # one weight matrix, by hand
    by_hand = (states[0][key] + states[1][key] + states[2][key]) / 3
    assert torch.allclose(soup[key], by_hand, atol=1e-7)
    assert not torch.equal(soup[key], states[0][key])  # the seeds' weights differ, so the mean moved
    for k, v in soup.items():
        assert torch.allclose(v.float(), torch.stack([s[k].float() for s in states]).mean(0), atol=1e-6), k
    # the file rebuilds a model that generates, like any other weights file
    rebuilt = load_model(str(out))
    assert all(torch.allclose(rebuilt.state_dict()[k], soup[k]) for k in soup)


def test_one_model_cast_to_float16(run_cli, tmp_path):
    model = tiny_video_model(seed=3)
    src = _save(tmp_path, "m.safetensors", model)
    out = tmp_path / "m16.safetensors"
    code, _, err = run_cli("export", src, "--out", str(out), "--dtype", "float16", "--quiet")
    assert code == 0, err
    got = load_file(str(out))
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {torch.float16}
    for k, v in model.state_dict().items():
        assert torch.equal(got[k].float(), v.to(torch.float16).float()), k


def test_mismatched_models_and_bad_out_are_one_line_exit_2(run_cli, tmp_path):
    a = _save(tmp_path, "a.safetensors", tiny_video_model(seed=0))
    b = _save(tmp_path, "b.safetensors", tiny_video_model(seed=0, depth=2))
    code, _, err = run_cli("export", a, b, "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "different model kind or config" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
    code, _, err = run_cli("export", a, "--out", str(tmp_path / "x.pt"))
    assert code == 2 and ".safetensors" in err and len(err.strip().splitlines()) == 1


def test_timesteps_written_into_a_student_are_its_new_default(run_cli, tmp_path):
    from genrl.generation import SamplingConfig, generate

    out = tmp_path / "d.safetensors"
    code, _, err = run_cli("export", "shapes-student-dmd", "--out", str(out), "--timesteps", "1000,625,375,125")
    assert code == 0, err
    exported, shipped = load_model(str(out)), load_model("shapes-student-dmd")
    assert list(exported.cfg.streaming.timesteps) == [1000.0, 625.0, 375.0, 125.0]
    assert list(shipped.cfg.streaming.timesteps) == [1000.0, 750.0, 500.0, 250.0]
    caption = "a large red circle moving left slowly on a dark background"
    asked = SamplingConfig(student_schedule=[1000.0, 625.0, 375.0, 125.0])
    a = generate(exported, [caption], 6, SamplingConfig(), seed=4).videos
    assert torch.equal(a, generate(shipped, [caption], 6, asked, seed=4).videos)
    assert not torch.equal(a, generate(shipped, [caption], 6, SamplingConfig(), seed=4).videos)
    code, _, err = run_cli("export", "shapes-teacher", "--out", str(tmp_path / "t.safetensors"), "--timesteps", "1000,500")
    assert code == 2 and "for streaming students" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("export", "shapes-student-dmd", "--out", str(tmp_path / "e.safetensors"), "--timesteps", "500")
    assert code == 2 and "must be 1000" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.safetensors").exists() and not (tmp_path / "e.safetensors").exists()
