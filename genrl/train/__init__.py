"""The one training loop (accumulation, checkpoint/resume, logging, progress, Accelerate)."""
