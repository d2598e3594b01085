"""Parallelism applied to models after they are built: sequence parallelism (Ulysses) for the DiT and the VLM."""

from .sequence import (SequenceParallelDiT, UlyssesAttention, all_to_all, apply_sequence_parallel,
                       apply_sequence_parallel_vlm, make_sequence_parallel, sequence_groups)

__all__ = ["SequenceParallelDiT", "UlyssesAttention", "all_to_all", "apply_sequence_parallel", "apply_sequence_parallel_vlm",
           "make_sequence_parallel", "sequence_groups"]
