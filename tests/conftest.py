import os

import pytest
import torch

# OMP_NUM_THREADS=1 keeps torch to one thread: mutmut forks a child per mutant from a process that already ran
# tests, and an OpenMP pool started before a fork deadlocks the child (its workers do not exist there).
torch.set_num_threads(1 if os.environ.get("OMP_NUM_THREADS") == "1" else min(2, os.cpu_count() or 1))


@pytest.fixture
def run_cli(capsys):
    """Run the genrl CLI in-process; returns (exit code, stdout, stderr)."""
    from genrl.cli.main import main

    def run(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
