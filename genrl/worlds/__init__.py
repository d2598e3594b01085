"""Worlds genrl trains and measures on: the shapes world, its QA, prompts as people write them."""

SPLITS = ("train", "val", "test")
"""The splits of every world (the test split holds out attribute combinations)."""
