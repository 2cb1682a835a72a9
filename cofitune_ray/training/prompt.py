"""Prompt templates: how an instruction example becomes the text the model sees.

A template is a string with `{instruction}` and `{input}` placeholders; the response follows the
formatted prompt directly and is closed by the tokenizer's EOS token. A template may give a second
form for examples whose input is empty, after a `|||` separator (Alpaca does this).
"""

from __future__ import annotations

#: Named templates. "alpaca" is the paper's; "compact" keeps tiny-model sequences short.
PROMPT_TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        "|||"
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    "compact": "{instruction}:{input}=",
}

SEPARATOR = "|||"


class PromptError(ValueError):
    """A template that cannot format an example."""


def resolve_template(template: str) -> str:
    """A named template's text, or the template itself when it is not a name."""
    text = PROMPT_TEMPLATES.get(template, template)
    with_input = text.split(SEPARATOR)[0]
    if "{instruction}" not in with_input:
        raise PromptError(
            f"prompt template must contain '{{instruction}}' or be one of {sorted(PROMPT_TEMPLATES)}; got {template!r}"
        )
    return text


def format_prompt(template: str, instruction: str, input: str = "") -> str:
    """The prompt text for one example (everything before the response)."""
    text = resolve_template(template)
    with_input, _, without_input = text.partition(SEPARATOR)
    chosen = without_input if (not input and without_input) else with_input
    return chosen.replace("{instruction}", instruction).replace("{input}", input)
