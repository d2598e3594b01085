import json
from dataclasses import dataclass, field

import pytest

from genrl.config import ConfigError, load_config


@dataclass
class Inner:
    lr: float = 1e-3
    name: str = "x"


@dataclass
class Outer:
    steps: int = 10
    optim: Inner = field(default_factory=Inner)


def test_yaml_and_overrides_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.5\n")
    cfg = load_config(Outer, p, ["optim.name=y"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.name) == (5, 0.5, "y")


def test_a_file_inherits_and_overrides_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\noptim:\n  lr: 0.5\n  name: base\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("inherit: ../base.yaml\noptim:\n  name: child\n")
    cfg = load_config(Outer, tmp_path / "sub" / "c.yaml", ["steps=7"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.name) == (7, 0.5, "child")
    (tmp_path / "base.yaml").write_text("inherit: sub/c.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(Outer, tmp_path / "sub" / "c.yaml")
    (tmp_path / "d.yaml").write_text("inherit: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_config(Outer, tmp_path / "d.yaml")


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("stepz: 3\n", [], "unknown config key 'stepz'; valid here: steps, optim"),
        ("", ["optim.lrr=1"], "unknown config key 'optim.lrr'; valid here: lr, name"),
        ("steps: many\n", [], "config key 'steps' got 'many', expected int"),
        ("", ["optim.lr=fast"], "config key 'optim.lr' got 'fast', expected float"),
        ("", ["steps"], "override 'steps' is not of the form key=value"),
        ("- a\n- b\n", [], "must hold a mapping of keys"),
        ("a: [1\n", [], "is not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, yaml_text, overrides, message):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_bad_config_exit_2(run_cli, tmp_path):
    code, out, err = run_cli("pretrain", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.strip() == f"error: config file {tmp_path / 'missing.yaml'} does not exist"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    code, out, err = run_cli("pretrain", "--config", str(bad))
    assert code == 2 and "unknown config key 'train.stepz'" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("pretrain", "--config", "configs/teacher_shapes.yaml", "optim.lr=fast")
    assert code == 2 and "config key 'optim.lr' got 'fast', expected float" in err
    code, out, err = run_cli("pretrain", "method=gan", "train.steps=0")
    assert code == 2 and "valid: flow, autoencoder" in err


def test_cli_bad_arguments_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("data", "preview", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "must end in .gif or .mp4" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("data", "preview", "--num", "0")
    assert code == 2 and "--num" in err
    code, _, err = run_cli("nonsense")
    assert code == 2 and "No such command 'nonsense'" in err
    code, _, err = run_cli("sample", "--prompt", "a red square", "--out", str(tmp_path / "a.gif"))
    assert code == 2 and "give exactly one of --model NAME or --checkpoint PATH" in err
    code, _, err = run_cli("sample", "--model", "no-such-model", "--prompt", "x", "--out", str(tmp_path / "a.gif"))
    assert code == 2 and "neither a built-in name" in err


def test_print_config_shows_resolved_values(run_cli):
    code, out, _ = run_cli("pretrain", "--config", "configs/autoencoder_shapes.yaml", "optim.lr=0.01", "--print-config")
    assert code == 0 and "lr: 0.01" in out and "method: autoencoder" in out


def _schema(command: str) -> type:
    from genrl.registry import RECIPES

    if command == "train-reward":
        return RECIPES.get("train-reward").config
    import importlib

    module, name = {"distill": ("distill", "DistillConfig"), "grpo": ("qa", "GRPOConfig"), "sft": ("qa", "SFTConfig"),
                    "pretrain": ("pretrain", "PretrainConfig"), "sweep": ("sweep", "SweepConfig")}[command]
    return getattr(importlib.import_module(f"genrl.cli.{module}"), name)


@pytest.mark.parametrize("command, config", [
    ("distill", "configs/dmd.yaml"), ("distill", "configs/stream_r1_wan.yaml"), ("grpo", "configs/grpo_video_qa.yaml"),
    ("sft", "configs/sft_video_qa.yaml"), ("pretrain", "configs/teacher_shapes.yaml"),
    ("train-reward", "configs/reward_shapes.yaml"), ("sweep", "configs/experiments/stream_r1_ablation.yaml"),
])
def test_print_config_documents_every_key_and_loads_back_the_same(run_cli, tmp_path, monkeypatch, command, config):
    import dataclasses
    import re

    from genrl.config import _hints, _walk

    for var in ("WAN_DIR", "VIDEOREWARD_DIR", "GENRL_PROMPTS"):  # what the Wan recipe reads from the environment
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    code, out, err = run_cli(command, "--config", config, "--print-config")
    assert code == 0, err
    (tmp_path / "printed.yaml").write_text(out)
    schema = _schema(command)
    assert load_config(schema, tmp_path / "printed.yaml") == load_config(schema, config)
    # every leaf key of the schema has a comment right above it, ending in its rule when it has one
    lines, path, leaves = out.splitlines(), [], 0
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_][\w-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        path = [(d, k) for d, k in path if d < indent] + [(indent, m.group(2))]
        dotted = ".".join(k for _, k in path)
        cls, key = _walk(schema, dotted)
        field = next((f for f in dataclasses.fields(cls) if f.name == key), None) if cls is not None else None
        if field is None or dataclasses.is_dataclass(_hints(cls)[key]):
            continue  # a key inside a dict field (e.g. a sweep's variants), or a section
        leaves += 1
        assert lines[i - 1].lstrip().startswith("# "), f"{command}: key '{dotted}' has no comment"
        if field.metadata.get("check"):
            assert lines[i - 1].endswith(")") and "(valid: " in " ".join(lines[max(0, i - 4) : i]), dotted
    assert leaves >= 10


def test_a_recipe_reading_unset_environment_variables_names_each_key_and_variable(run_cli, monkeypatch):
    for var in ("WAN_DIR", "GENRL_PROMPTS", "VIDEOREWARD_DIR"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run_cli("distill", "--config", "configs/stream_r1_wan.yaml", "--print-config")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: config key 'teacher' reads the environment variable WAN_DIR, which is not set; also "
                          "GENRL_PROMPTS (for 'prompts'), VIDEOREWARD_DIR (for 'stream_r1.reward_weights'): export them")
    monkeypatch.setenv("WAN_DIR", "/models/wan")
    monkeypatch.setenv("VIDEOREWARD_DIR", "/models/vr")
    code, out, err = run_cli("distill", "--config", "configs/stream_r1_wan.yaml", "prompts=/data/p.txt", "--print-config")
    assert code == 0 and "teacher: /models/wan" in out and "prompts: /data/p.txt" in out, err


def test_print_config_comment_is_the_fields_docstring(run_cli):
    code, out, _ = run_cli("distill", "--config", "configs/dmd.yaml", "--print-config")
    lines = out.splitlines()
    i = lines.index("  val_every: 50")
    block = []
    while lines[i - 1].startswith("  # "):
        i -= 1
        block.insert(0, lines[i][4:])
    assert " ".join(block).startswith("Steps between validations on held-out data (the val split; also at the last step)")
    assert " ".join(block).endswith("(valid: a number >= 0)")
    assert "  # Student EMA decay (the EMA is exported). (valid: a number in [0, 1])" in lines


def test_data_preview_writes_a_grid(run_cli, tmp_path):
    from genrl.io.video import read_video

    code, out, _ = run_cli("data", "preview", "--out", str(tmp_path / "g.gif"), "--num", "4", "--quiet")
    assert code == 0
    grid = read_video(tmp_path / "g.gif")
    assert grid.shape[0] == 9 and grid.shape[2] > 128 and grid.std() > 0.05


def test_data_probe_command_reports_accuracy(run_cli, tmp_path):
    code, out, _ = run_cli("data", "probe", "--num", "16", "--quiet", "--out", str(tmp_path / "p.json"))
    assert code == 0 and "prompt_accuracy=1.0000" in out


def test_readme_command_table_matches_the_cli():
    import re
    from pathlib import Path

    import click

    from genrl.cli.main import cli

    text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    table = text.split("<!-- commands -->")[1].split("<!-- /commands -->")[0]
    documented = re.findall(r"`genrl ([a-z -]+?)`", table)
    actual = []
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        subs = getattr(cli.get_command(ctx, name), "commands", None)
        actual += [f"{name} {s}" for s in subs] if subs else [name]
    assert sorted(documented) == sorted(actual)


def test_top_level_help_lists_each_command_by_its_own_first_line_without_loading_it():
    import subprocess
    import sys

    import click

    from genrl.cli.main import COMMANDS, cli

    ctx = click.Context(cli)
    for name, (_, _, line) in COMMANDS.items():
        cmd = cli.get_command(ctx, name)
        assert cmd.name == name and cmd.get_short_help_str(10_000) == line
    # `genrl --help`, `--version` and the torch-free commands' help answer without importing torch
    probe = ("import sys; from genrl.cli.main import main; codes = [main(a) for a in ({!r})]; "
             "print(codes, 'torch' in sys.modules)")
    for argv in (["--help"], ["--version"], ["sample", "--help"], ["eval", "--help"], ["compare", "--help"],
                 ["select", "--help"], ["score", "--help"], ["report", "--help"]):
        out = subprocess.run([sys.executable, "-c", probe.format([argv])], capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith("[0] False"), (argv, out.stdout[-300:], out.stderr[-300:])
    assert cli.get_command(ctx, "no-such-command") is None


def test_env_reports_this_machine_as_genrl_sees_it(run_cli, tmp_path):
    import importlib.util

    import torch

    from genrl.attention import resolve_backend

    code, out, err = run_cli("env", "--json", str(tmp_path / "env.json"))
    assert code == 0, err
    r = json.loads((tmp_path / "env.json").read_text())
    assert r["libraries"]["torch"] == torch.__version__.split("+")[0] and f"torch {r['libraries']['torch']}" in out
    for package, module in (("flash-attn", "flash_attn"), ("xformers", "xformers")):
        assert (r["gpu_extras"][package] is None) == (importlib.util.find_spec(module) is None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.empty(1, 1, 1, 1, dtype=torch.bfloat16, device=device)
    assert r["attention_backend"]["bf16, no mask"] == resolve_backend(q, None)
    assert len(r["gpus"]) == torch.cuda.device_count() and r["cpu_threads"] == torch.get_num_threads()
    assert all(r["builtin_models"].values()) and r["assets"]["files"] >= len(r["builtin_models"])
    assert f"built-in models: {len(r['builtin_models'])} of {len(r['builtin_models'])} present" in out


def test_data_probe_through_the_shipped_autoencoder(run_cli):
    code, out, _ = run_cli("data", "probe", "--num", "8", "--quiet", "--autoencoder", "shapes-autoencoder")
    assert code == 0 and "after shapes-autoencoder: 1.0000" in out


@pytest.mark.parametrize(
    "command, overrides, message",
    [
        ("distill", ["dmd.batch_size=0"], "config key 'dmd.batch_size' is 0; valid: an integer >= 1"),
        ("distill", ["optim.lr=-1e-4"], "config key 'optim.lr' is -0.0001; valid: a number > 0"),
        ("distill", ["optim.lr=nan"], "config key 'optim.lr' is nan; valid: a number > 0"),
        ("distill", ["train.log_every=0"], "config key 'train.log_every' is 0; valid: an integer >= 1"),
        ("distill", ["train.checkpoint_every=0"], "config key 'train.checkpoint_every' is 0; valid: an integer >= 1"),
        ("distill", ["streaming.timesteps=[]"], "config key 'streaming.timesteps' is []; valid: a non-empty list"),
        ("distill", ["streaming.timesteps=[1000,-5]"], "every element a number in (0, 1000]"),
        ("distill", ["train.tracker=mlflow"], "config key 'train.tracker' is 'mlflow'; valid: one of none, tensorboard, wandb"),
        ("distill", ["train.steps=-3"], "config key 'train.steps' is -3; valid: a number >= 0"),
        ("distill", ["train.grad_accum=0"], "config key 'train.grad_accum' is 0; valid: an integer >= 1"),
        ("distill", ["world.height=0"], "config key 'world.height' is 0; valid: a number in [8, 4096]"),
        ("distill", ["dmd.real_guidance=1e38"], "config key 'dmd.real_guidance' is 1e+38; valid: a number in [0, 50]"),
        ("distill", ["stream_r1.axes=[vq,speed]"], "config key 'stream_r1.axes'"),
        ("distill", ["world.frames=7"], "config key 'world.frames' is 7 (7 latent frames); valid: whole 3-latent-frame chunks, e.g. 6 or 9"),
        ("pretrain", ["optim.warmup_steps=-1"], "config key 'optim.warmup_steps' is -1"),
        ("grpo", ["grpo.group_size=1"], "config key 'grpo.group_size' is 1; valid: an integer >= 2"),
        ("grpo", ["grpo.loss=mean"], "config key 'grpo.loss' is 'mean'; valid: one of grpo, bnpo, dr_grpo, dapo"),
        ("sweep", ["seeds=[]"], "config key 'seeds' is []; valid: a non-empty list"),
    ],
)
def test_bad_values_are_one_line_naming_key_value_and_what_is_valid(run_cli, tmp_path, command, overrides, message):
    extra = ["--config", "configs/experiments/stream_r1_vs_dmd.yaml"] if command == "sweep" else []
    code, out, err = run_cli(command, *extra, f"out_dir={tmp_path / 'run'}", *overrides)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(
    "args, option",
    [
        (["eval", "--model", "shapes-teacher", "--num", "2", "--out", "{bad}/x.json"], "'--out'"),
        (["score", "genrl/assets", "--out", "{bad}/s.json"], "'--out'"),
        (["score", "genrl/assets", "--saliency", "{bad}/sal"], "'--saliency'"),
        (["sample", "--model", "shapes-teacher", "--prompt", "x", "--out", "{bad}/x.gif"], "'--out'"),
        (["sample", "--model", "shapes-teacher", "--prompt", "x", "--out", "x.gif", "--frames-dir", "{bad}/f"], "'--frames-dir'"),
        (["distill", "out_dir={bad}/run"], "config key 'out_dir'"),
        (["grpo", "out_dir={bad}/run"], "config key 'out_dir'"),
        (["plan", "--json", "{bad}/plan.json"], "'--json'"),
        (["bench", "stream", "--json", "{bad}/b.json"], "'--json'"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_before_any_work(run_cli, tmp_path, args, option):
    bad = tmp_path / "a_file"
    bad.write_text("")
    code, out, err = run_cli(*[a.format(bad=bad) for a in args])
    assert code == 2 and option in err and "a_file is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert not out.strip()  # nothing ran


def test_the_writability_probe_leaves_no_trace(tmp_path):
    from genrl.cli.options import writable_problem

    assert writable_problem(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == []


def test_the_writability_probe_copes_with_another_process_making_or_removing_the_folder(tmp_path, monkeypatch):
    """The processes of one `accelerate launch` check the same out_dir at once (a CI run failed on it)."""
    from pathlib import Path

    from genrl.cli import options

    target = tmp_path / "run"
    exists, write = Path.exists, Path.write_bytes
    state = {"looked": False, "removed": False}

    def made_meanwhile(self):  # the folder appears between the look and the mkdir
        if self == target and not state["looked"]:
            state["looked"] = True
            target.mkdir()
            return False
        return exists(self)

    monkeypatch.setattr(Path, "exists", made_meanwhile)
    assert options.writable_problem(target) is None and target.is_dir()  # was "File exists"
    target.rmdir()
    monkeypatch.setattr(Path, "exists", exists)

    def removed_meanwhile(self, data):  # the folder we made is removed by the other process before our probe
        if not state["removed"]:
            state["removed"] = True
            target.rmdir()
        return write(self, data)

    monkeypatch.setattr(Path, "write_bytes", removed_meanwhile)
    assert options.writable_problem(target) is None and state["removed"]
    assert list(tmp_path.iterdir()) == []
