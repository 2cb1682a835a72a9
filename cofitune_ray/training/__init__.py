"""Training and scoring one node: data and prompts, the model adapter, soft-masking and importance, the training
loop and its state, sharding, evaluation (lm-eval tasks included), checkpoints and export, the memory measurement;
run on Ray Train (`worker`, `runner`, `softmask.job`, `spectrum`) or in-process (`local`). docs/architecture.md
lists every module."""
