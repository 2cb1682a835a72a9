"""The toy world's character-level tokenizer, saved in Hugging Face format.

Every printable ASCII character and the newline is one token, so any prompt template (the compact
one and Alpaca's) tokenises without unknown symbols. Special tokens: <pad> (id 0), <bos>, <eos>,
<unk>. Tokenising with special tokens prepends <bos>; the response's <eos> is added by the caller.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

#: Every symbol the tokenizer knows: printable ASCII (letters, digits, punctuation, space) and newline.
ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation + " \n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character of ALPHABET."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def save_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer, save it to `directory` (loadable with AutoTokenizer), and return it."""
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(directory))
    return tokenizer
