"""`genrl compare`: paired differences of two eval files, with intervals, and refusal to pair what is not paired."""

import json

import pytest


def _report(hits, vq, seed=0):
    return {"split": "test", "num_videos": len(hits), "frames": 9, "prompts": "full", "seed": seed, "steps": 50,
            "guidance": 4.0, "prompt_accuracy": sum(hits) / len(hits),
            "per_video": {"hit": hits, "rewards": {"shapes": {"vq": vq}}}}


def test_compare_gives_the_paired_mean_difference_and_refuses_unpaired_files(run_cli, tmp_path):
    a0, b0 = _report([1, 0, 1, 1], [0.0, 0.5, 1.0, -1.0]), _report([1, 1, 1, 1], [0.5, 1.0, 1.5, -0.5])
    a1, b1 = _report([0, 0, 1, 1], [0.0, 0.0, 0.0, 0.0], 1), _report([0, 1, 1, 1], [0.5, 0.5, 0.5, 0.5], 1)
    for name, r in {"a0": a0, "b0": b0, "a1": a1, "b1": b1}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    code, out, err = run_cli("compare", str(tmp_path / "a0.json"), str(tmp_path / "a1.json"), "--vs",
                             str(tmp_path / "b0.json"), "--vs", str(tmp_path / "b1.json"), "--out", str(tmp_path / "d.json"))
    assert code == 0, err
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["prompt_accuracy"]["mean"] == pytest.approx(2 / 8)  # two videos flipped to right out of 8
    assert d["shapes:vq"]["mean"] == pytest.approx(0.5)  # every video +0.5
    assert d["shapes:vq"]["low"] == pytest.approx(0.5) and d["shapes:vq"]["high"] == pytest.approx(0.5)
    assert d["prompt_accuracy"]["low"] <= d["prompt_accuracy"]["mean"] <= d["prompt_accuracy"]["high"]
    assert "over 8 paired videos" in out and "shapes:vq" in out
    code, _, err = run_cli("compare", str(tmp_path / "a0.json"), "--vs", str(tmp_path / "b1.json"))
    assert code == 2 and "'seed' differs (0 vs 1)" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = run_cli("compare", str(tmp_path / "bad.json"), "--vs", str(tmp_path / "b0.json"))
    assert code == 2 and "not a `genrl eval --out` file" in err


def test_two_qa_eval_files_pair_question_by_question(run_cli, tmp_path):
    import json

    import torch

    from genrl.methods.qa import build_vlm
    from genrl.models.registry import save_weights
    from genrl.worlds.qa import ShapesQA

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_vlm("debug", ShapesQA())
        paths.append(save_weights(m, tmp_path / f"m{seed}.safetensors", "vlm", m.cfg))
    outs = []
    for i, p in enumerate(paths):
        out = tmp_path / f"e{i}.json"
        code, _, err = run_cli("eval", "--task", "qa", "--checkpoint", str(p), "--num", "12", "--out", str(out), "--quiet")
        assert code == 0, err
        outs.append(out)
    a, b = (json.loads(o.read_text()) for o in outs)
    assert len(a["per_item"]["reward"]) == 12 and a["per_item"]["type"] == b["per_item"]["type"]
    assert sum(a["per_item"]["reward"]) / 12 == a["accuracy"]
    code, out, err = run_cli("compare", str(outs[0]), "--vs", str(outs[1]), "--out", str(tmp_path / "c.json"))
    assert code == 0, err
    assert "12 paired questions" in out
    c = json.loads((tmp_path / "c.json").read_text())
    diff = sum(b["per_item"]["reward"]) / 12 - sum(a["per_item"]["reward"]) / 12
    assert c["accuracy"]["mean"] == pytest.approx(diff) and c["accuracy"]["low"] <= diff <= c["accuracy"]["high"]
    other = tmp_path / "h.json"
    run_cli("eval", "--task", "qa", "--checkpoint", str(paths[1]), "--num", "12", "--hallucination", "1.0", "--out", str(other), "--quiet")
    code, _, err = run_cli("compare", str(outs[0]), "--vs", str(other))
    assert code == 2 and "'hallucination' differs" in err


def test_motion_jerk_pairs_only_the_videos_both_files_could_read(run_cli, tmp_path):
    a, b = _report([1, 0, 1], [0.0, 0.0, 0.0]), _report([1, 0, 1], [0.0, 0.0, 0.0])
    a["per_video"]["jerk"], b["per_video"]["jerk"] = [0.5, None, 1.0], [0.75, 2.0, None]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    code, _, err = run_cli("compare", str(tmp_path / "a.json"), "--vs", str(tmp_path / "b.json"), "--out",
                           str(tmp_path / "d.json"))
    assert code == 0, err
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["motion_jerk"]["mean"] == pytest.approx(0.25)  # only the first video is read in both


def test_select_picks_the_most_accurate_candidate_that_loses_no_reward_axis(run_cli, tmp_path):
    hits = [1, 0, 1, 0] * 4
    vq = [0.0, 0.25, 0.5, -0.25] * 4
    models = {  # name: (hits, vq) at each of the two sampling seeds
        "base": (hits, vq),
        "sharp-but-worse-vq": ([1] * 16, [v - 0.5 for v in vq]),  # most accurate, but every video's vq -0.5
        "better": ([1, 1, 1, 0] * 4, [v + 0.1 for v in vq]),  # accuracy 0.75, vq +0.1
        "best-tied": ([1, 0, 1, 1] * 4, vq),  # accuracy 0.75 too, vq unchanged: listed after "better"
        "worse": ([1, 0, 0, 0] * 4, [v + 1.0 for v in vq]),  # better vq but lower accuracy
    }
    files = []
    for name, (h, v) in models.items():
        for seed in (0, 1):
            r = _report(h, v, seed)
            r["model"] = name
            files.append(tmp_path / f"{name}_{seed}.json")
            files[-1].write_text(json.dumps(r))
    code, out, err = run_cli("select", *map(str, files), "--baseline", "base", "--out", str(tmp_path / "s.json"))
    assert code == 0, err
    s = json.loads((tmp_path / "s.json").read_text())
    rows = {r["model"]: r for r in s["candidates"]}
    assert s["baseline_value"] == pytest.approx(0.5) and s["seeds"] == [0, 1]
    assert rows["sharp-but-worse-vq"]["prompt_accuracy"] == pytest.approx(1.0)
    assert rows["sharp-but-worse-vq"]["worst_guard_interval"] == pytest.approx([-0.5, -0.5, -0.5])
    assert [rows[n]["eligible"] for n in models if n != "base"] == [False, True, True, False]
    assert rows["better"]["difference"][0] == pytest.approx(0.25)
    assert s["pick"] == "better" and "pick: better" in out
    code, out, err = run_cli("select", *map(str, files), "--baseline", "base", "--guard", "prompt_accuracy")
    assert code == 0 and "pick: sharp-but-worse-vq" in out  # guarding accuracy only lets the vq loss through
    code, _, err = run_cli("select", *map(str, files[:-1]), "--baseline", "base")
    assert code == 2 and "'worse' has sampling seeds [0] but the baseline [0, 1]" in err and len(err.splitlines()) == 1
    code, _, err = run_cli("select", *map(str, files), "--baseline", "dmd")
    assert code == 2 and "no eval file of the baseline 'dmd'; the files hold: base, sharp-but-worse-vq" in err
    # a run's eval.json merges its sampling seeds into one file ("seed": [0, 1]): one file per model pairs too
    merged = []
    for name in ("base", "better"):
        r = _report(models[name][0] * 2, models[name][1] * 2, [0, 1])
        r["model"] = f"runs/{name}"
        merged.append(tmp_path / f"{name}_eval.json")
        merged[-1].write_text(json.dumps(r))
    code, out, err = run_cli("select", *map(str, merged), "--baseline", "runs/base", "--out", str(tmp_path / "m.json"))
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["pick"] == "runs/better" and m["seeds"] == [[0, 1]]
    assert m["candidates"][0]["difference"][0] == pytest.approx(0.25)  # as with one file per seed


def test_compare_by_splits_the_paired_difference_by_what_the_prompts_named(run_cli, tmp_path):
    named = [{"speed": "fast", "size": "small"}, {"speed": "slow", "size": "small"}, {"size": "large"},
             {"speed": "fast", "size": "large"}]
    a, b = _report([1, 1, 0, 0], [0.0, 0.0, 0.0, 0.0]), _report([1, 0, 1, 1], [-1.0, 0.5, 0.25, -0.5])
    a["per_video"]["named"] = b["per_video"]["named"] = named
    for name, r in {"a": a, "b": b}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    code, out, err = run_cli("compare", str(tmp_path / "a.json"), "--vs", str(tmp_path / "b.json"), "--by", "speed",
                             "--out", str(tmp_path / "d.json"))
    assert code == 0, err
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["shapes:vq"]["mean"] == pytest.approx(-0.75 / 4)  # all four videos
    fast, slow = d["by"]["speed"]["fast"], d["by"]["speed"]["slow"]  # the third prompt names no speed
    assert fast["videos"] == 2 and slow["videos"] == 1 and set(d["by"]["speed"]) == {"fast", "slow"}
    assert fast["shapes:vq"]["mean"] == pytest.approx(-0.75) and fast["prompt_accuracy"]["mean"] == pytest.approx(0.5)
    assert slow["shapes:vq"]["mean"] == pytest.approx(0.5) and slow["prompt_accuracy"]["mean"] == pytest.approx(-1.0)
    assert "speed = fast (2 paired videos)" in out
    code, _, err = run_cli("compare", str(tmp_path / "a.json"), "--vs", str(tmp_path / "b.json"), "--by", "mood")
    assert code == 2 and "--by mood: not a prompt attribute; valid: colour, shape, size" in err
    del a["per_video"]["named"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    code, _, err = run_cli("compare", str(tmp_path / "a.json"), "--vs", str(tmp_path / "b.json"), "--by", "size")
    assert code == 2 and "re-run genrl eval" in err and len(err.strip().splitlines()) == 1


def test_compare_plot_draws_each_interval_it_prints(run_cli, tmp_path, monkeypatch):
    from genrl.cli import compare as cmp

    named = [{"speed": "fast"}, {"speed": "slow"}, {"speed": "fast"}, {"speed": "slow"}]
    a, b = _report([1, 1, 0, 0], [0.0, 0.0, 0.0, 0.0]), _report([1, 0, 1, 1], [-1.0, 0.5, 0.25, -0.5])
    a["per_video"]["named"] = b["per_video"]["named"] = named
    for name, r in {"a": a, "b": b}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    drawn = []
    real = cmp.forest_plot
    monkeypatch.setattr(cmp, "forest_plot", lambda *args: drawn.extend(real(*args)) or drawn)
    code, _, err = run_cli("compare", str(tmp_path / "a.json"), "--vs", str(tmp_path / "b.json"), "--by", "speed",
                           "--out", str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png"))
    assert code == 0, err
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((tmp_path / "d.json").read_text())
    want = {("all", k): v for k, v in d.items() if k != "by"}
    want |= {(f"speed = {s}", k): v for s, res in d["by"]["speed"].items() for k, v in res.items() if k != "videos"}
    assert {(r["panel"], r["metric"]) for r in drawn} == set(want)
    for r in drawn:  # the point, the interval's ends, and top-down in the printed order
        w = want[(r["panel"], r["metric"])]
        assert r["mean"] == pytest.approx(w["mean"]) and r["low"] == pytest.approx(w["low"])
        assert r["high"] == pytest.approx(w["high"])
    rows = [r["metric"] for r in sorted((r for r in drawn if r["panel"] == "all"), key=lambda r: -r["y"])]
    assert rows == [k for k in d if k != "by"]
