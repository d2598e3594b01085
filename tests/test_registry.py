"""One registry per kind: genrl's core reaches rewards/ and distill/ only through it."""

import ast
from pathlib import Path

import pytest

from genrl.errors import UsageError
from genrl.registry import CONVERTERS, METHODS, RECIPES, REWARDS, TASK_REWARDS

ROOT = Path(__file__).resolve().parents[1]


def test_layers_register_what_they_provide():
    assert {"distill", "train-reward"} <= set(RECIPES.names())
    assert {"ode_init", "dmd", "stream_r1"} <= set(METHODS.names())
    assert {"shapes", "clip", "videoreward"} <= set(REWARDS.names())
    assert {"choice", "numeric", "format"} <= set(TASK_REWARDS.names()) and "videoreward" in CONVERTERS.names()
    assert TASK_REWARDS.get("choice")("<answer> B </answer>", "B") == 1.0
    with pytest.raises(UsageError, match="unknown method 'ppo'; valid: .*dmd"):
        METHODS.get("ppo")


def test_nothing_under_genrl_imports_rewards_or_distill():
    offenders = []
    for path in (ROOT / "genrl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("rewards", "distill")]
    assert not offenders, offenders
