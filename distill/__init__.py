"""Distillation of streaming students: DMD, self-forcing rollout, Stream-R1 weighting."""
