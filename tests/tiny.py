"""Tiny models, tokenizers, data and configs built on the spot for tests (no hub, no downloads)."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import yaml
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from cofitune_ray.config import ColumnsConfig

ALPHABET = string.ascii_letters + string.digits + " .,:;=!?-+*/()'\"\n_#"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """A character-level tokenizer saved in Hugging Face format."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


_FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
}


def make_model(directory: Path, family: str = "llama", layers: int = 4, hidden: int = 32, intermediate: int = 48,
               heads: int = 4, kv_heads: int = 2, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised tiny model of `family`, saved as a standard HF directory (vocabulary: make_tokenizer's,
    unless `vocab_size` is given)."""
    import torch

    config_cls, model_cls, extra = _FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(vocab_size=vocab_size or len(SPECIALS) + len(ALPHABET), hidden_size=hidden,
                        intermediate_size=intermediate,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        tie_word_embeddings=False, **extra)
    model = model_cls(config)
    model.save_pretrained(directory)
    return model


def make_examples(n: int, seed: int = 0, task: str = "reverse") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
        output = word[::-1] if task == "reverse" else word.upper()
        rows.append({"instruction": task, "input": word, "output": output})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_world(root: Path, family: str = "llama", layers: int = 4, intermediate: int = 48) -> dict:
    """Model + tokenizer + speciality and versatility data; returns a config dict pointing at them."""
    model_dir = root / "model"
    make_model(model_dir, family, layers=layers, intermediate=intermediate)
    make_tokenizer(model_dir)
    spec_train = write_jsonl(root / "spec_train.jsonl", make_examples(32, seed=1, task="reverse"))
    spec_eval = write_jsonl(root / "spec_eval.jsonl", make_examples(8, seed=2, task="reverse"))
    vers_eval = write_jsonl(root / "vers_eval.jsonl", make_examples(8, seed=3, task="upper"))
    return {
        "model": {"path": str(model_dir)},
        "data": {
            "speciality_train": str(spec_train),
            "speciality_eval": {"name": "reverse", "path": str(spec_eval)},
            "versatility": [{"name": "upper", "path": str(vers_eval)}],
            "prompt_template": "compact",
            "max_seq_length": 32,
        },
        "train": {"lr": 1e-3, "epochs": 1, "max_steps": 3, "batch_size": 4},
        "eval": {"batch_size": 8, "max_new_tokens": 6},
        "importance": {"max_examples": 8, "batch_size": 4},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "storage_path": str(root / "runs"),
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_lm_eval_task(folder: Path, task: str, data: Path, output_type: str = "generate_until",
                       max_gen_toks: int = 8) -> Path:
    """A local lm-evaluation-harness task over one of our JSONL files, prompted like the `compact` template.

    `multiple_choice` scores each line's `choices` (its `answer` is the index), `generate_until` the
    greedy completion against `output` (exact match). lm-eval reads the file through `dataset_path: json`.
    """
    common = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data).resolve())}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "{{instruction}}:{{input}}=",
        "target_delimiter": "",
    }
    if output_type == "multiple_choice":
        specific = {"doc_to_choice": "{{choices}}", "doc_to_target": "answer",
                    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    else:
        specific = {"doc_to_target": "{{output}}",
                    "generation_kwargs": {"until": ["\n"], "max_gen_toks": max_gen_toks, "do_sample": False},
                    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump({**common, **specific}, sort_keys=False))
    return path


CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: A ChatML template like SmolLM2's, with its default system turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_chat_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """The character-level tokenizer with ChatML specials and CHAT_TEMPLATE; EOS is the end-of-turn token."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHAT_SPECIALS + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(".|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=CHAT_SPECIALS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def _chat(row: dict, user: str = "user", assistant: str = "assistant", key: str = "role",
          content: str = "content") -> dict:
    """A row as a chat record: its instruction as the user turn, its output as the assistant turn."""
    turns = [{key: user, content: row["instruction"]}, {key: assistant, content: row["output"]}]
    return {"messages": turns, **{k: row[k] for k in ("choices", "answer") if k in row}}


def _table(rows: list[dict]):
    """An Arrow table of every field any row has (null where a row lacks it)."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows])


def write_formats(root, rows: list[dict]) -> dict[str, tuple]:
    """The same records in every accepted format: name -> (path, data.columns)."""
    import datasets
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    chat = [_chat(r, user="user") for r in rows]
    sharegpt = [{"conversations": _chat(r, "human", "gpt", "from", "value")["messages"],
                 **{k: r[k] for k in ("choices", "answer") if k in r}} for r in rows]
    renamed = [{"question": r["instruction"], "context": r["input"], "reply": r["output"],
                **{k: r[k] for k in ("choices", "answer") if k in r}} for r in rows]
    write_jsonl(root / "instructions.jsonl", rows)
    (root / "alpaca.json").write_text(json.dumps(rows, indent=2))
    write_jsonl(root / "chat.jsonl", chat)
    (root / "sharegpt.json").write_text(json.dumps(sharegpt))
    pq.write_table(_table(rows), root / "instructions.parquet")
    pq.write_table(_table(chat), root / "chat.parquet")
    datasets.Dataset(_table(rows)).save_to_disk(str(root / "saved"))
    datasets.Dataset(_table(renamed)).save_to_disk(str(root / "renamed"))
    return {
        "jsonl": (root / "instructions.jsonl", ColumnsConfig()),
        "json": (root / "alpaca.json", ColumnsConfig()),
        "messages": (root / "chat.jsonl", ColumnsConfig()),
        "sharegpt": (root / "sharegpt.json", ColumnsConfig(messages="conversations")),
        "parquet": (root / "instructions.parquet", ColumnsConfig()),
        "messages-parquet": (root / "chat.parquet", ColumnsConfig()),
        "save_to_disk": (root / "saved", ColumnsConfig()),
        "mapped-columns": (root / "renamed", ColumnsConfig(instruction="question", input="context", output="reply")),
    }


#: write_formats' names, one per accepted format (and mapped field names).
FORMATS = ["jsonl", "json", "messages", "sharegpt", "parquet", "messages-parquet", "save_to_disk", "mapped-columns"]


def make_gguf(path: Path, layers: int = 2, hidden: int = 32, intermediate: int = 48, heads: int = 4,
              kv_heads: int = 2, seed: int = 0) -> Path:
    """A tiny LLaMA GGUF file written with the `gguf` package's writer, laid out like SmolLM2's: a byte-level BPE
    tokenizer (256 byte symbols, two merges, ChatML specials; EOS = <|im_end|>), a chat template, tied embeddings."""
    import gguf
    import numpy as np
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = CHAT_SPECIALS + symbols + ["th", "the"]
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(CHAT_SPECIALS)
                           + [gguf.TokenType.NORMAL] * (len(tokens) - len(CHAT_SPECIALS)))
    writer.add_token_merges(["t h", "th e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape: int):
        return rng.normal(0.0, 0.05, size=shape).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    kv = hidden // heads * kv_heads
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (intermediate, hidden)),
                            ("ffn_up", (intermediate, hidden)), ("ffn_down", (hidden, intermediate))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
