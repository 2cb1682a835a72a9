"""The offline demo world: a character tokenizer, synthetic tasks as JSONL, and a toy LLaMA base model.

Modules: `tokenizer` (character vocabulary, HF format), `tasks` (general and special tasks),
`worlds` (the named worlds: `calibrated`, `cliff`), `corpus` (JSONL splits, deterministic by seed),
`pretrain` (the toy base model), `prepare` (`ensure_toy_world`: build once, then reuse from the cache;
also a CLI), `calibrate` (full SFT's curves per learning rate and seed, against the world's targets; a CLI).
"""
