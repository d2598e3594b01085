"""Training methods: each one file with a Config and a Method (step, optimisers, checkpoint lists)."""
