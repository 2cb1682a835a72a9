"""One answer from a model directory, through its chat template: does a saved model still chat?

    python -m cofitune_ray.realworld.chat MODEL_DIR "What is the capital of Japan?" [--max-new-tokens N]

Greedy decoding, one user turn, the answer up to the tokenizer's EOS (the end-of-turn token). Works on
the converted base model, on `best_model/` of a search, on any Hugging Face directory with a chat template.
"""

from __future__ import annotations

import argparse


def answer(model, tokenizer, question: str, max_new_tokens: int = 48) -> str:
    """The model's greedy answer to one user turn, formatted by the tokenizer's chat template."""
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("question")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    from cofitune_ray.training.model import load_model, load_tokenizer

    model, tokenizer = load_model(args.model_dir).eval(), load_tokenizer(args.model_dir)
    print(answer(model, tokenizer, args.question, args.max_new_tokens))


if __name__ == "__main__":
    main()
