"""`python -m genrl.cli ...` (what `accelerate launch -m genrl.cli` runs)."""

from .main import entry

entry()
