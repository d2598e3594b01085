"""Tiny random-config models shared by the tests."""

import torch

from genrl.models.autoencoder import AutoencoderConfig
from genrl.models.dit import DiTConfig
from genrl.models.text import TextEncoderConfig
from genrl.models.video_model import StreamingConfig, VideoModel, VideoModelConfig


def tiny_video_model(seed: int = 0, streaming: bool = False, depth: int = 1) -> VideoModel:
    cfg = VideoModelConfig(
        dit=DiTConfig(dim=24, depth=depth, heads=2, text_dim=16, mlp_ratio=1.0, chunk_frames=3),
        text=TextEncoderConfig(dim=16, layers=1, heads=2),
        autoencoder=AutoencoderConfig(width=8),
        streaming=StreamingConfig(enabled=streaming, timesteps=[1000.0, 750.0, 500.0, 250.0], local_frames=6, sink_frames=3),
    )
    torch.manual_seed(seed)
    m = VideoModel(cfg)
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def accelerate_launch(nproc: int, mixed_precision: str = "no") -> list[str]:
    """The command prefix that runs ``-m genrl.cli ...`` as ``nproc`` gloo CPU ranks, as users launch genrl
    (``mixed_precision``: accelerate's --mixed_precision, 'no' or 'bf16', CPU autocast)."""
    import os
    import shutil
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), "accelerate")  # the venv's own launcher
    launcher = beside if os.path.exists(beside) else shutil.which("accelerate") or "accelerate"
    return [launcher, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no", "-m", "genrl.cli"]


class OneProcess:
    """The bits of an Accelerator that a StepContext uses, for one process on the CPU."""

    num_processes, device = 1, torch.device("cpu")

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
