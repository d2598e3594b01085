"""Parallelism applied to models after they are built: sequence parallelism (Ulysses) for the DiT, the Wan2.1
transformer, the tiny VLM and transformers Qwen2-VL / Qwen2.5-VL policies, and sharding of models over the
processes (FSDP2): frozen DiTs and policies, and trained policies."""

from .sequence import (SequenceParallelDiT, SequenceParallelWanDiT, UlyssesAttention, all_to_all,
                       apply_sequence_parallel, apply_sequence_parallel_vlm,
                       every_rank, make_sequence_parallel, sequence_groups)
from .shard import is_sharded, local_bytes, shard, shard_frozen

__all__ = ["SequenceParallelDiT", "SequenceParallelWanDiT", "UlyssesAttention", "all_to_all", "apply_sequence_parallel",
           "apply_sequence_parallel_vlm", "every_rank", "is_sharded", "local_bytes", "make_sequence_parallel",
           "sequence_groups", "shard", "shard_frozen"]
