import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def run_cli(capsys):
    """Run the genrl CLI in-process; returns (exit code, stdout, stderr)."""
    from genrl.cli.main import main

    def run(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
