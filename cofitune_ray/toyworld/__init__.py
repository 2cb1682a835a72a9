"""The offline demo world: a character tokenizer, synthetic tasks as JSONL, and a toy LLaMA base model.

Modules: `tokenizer` (character vocabulary, HF format), `tasks` (general and special tasks),
`data` (JSONL splits, deterministic by seed), `pretrain` (the toy base model and its CLI),
`prepare` (`ensure_toy_world`: build once, then reuse from the cache; also a CLI).
"""
