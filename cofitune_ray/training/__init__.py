"""Training and scoring one node on Ray Train: data, prompts, model adapter, soft-mask, importance,
the worker loop, the runner, checkpoints, evaluation and export."""
