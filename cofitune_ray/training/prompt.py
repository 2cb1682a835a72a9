"""Prompt templates: how an instruction example becomes the text the model sees.

`chat` (CHAT) uses the tokenizer's own chat template instead (`encode_chat`): the instruction and its
input are the user's turn, the output the assistant's, and the response the model learns is the
assistant's answer through its end-of-turn token. Any other template is a string with
`{instruction}` and `{input}` placeholders (both required: a template without `{input}` would drop
every example's input); the response follows the formatted prompt directly and is closed by the
tokenizer's EOS token. A template may give a second form for examples whose input is empty, after
a `|||` separator (Alpaca does this).
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
#: The template name that formats through the tokenizer's chat template.
CHAT = "chat"


class PromptError(ValueError):
    """A template that cannot format an example."""


def resolve_template(template: str) -> str:
    """A named template's text, or the template itself when it is not a name (`chat` is returned as it is)."""
    if template == CHAT:
        return template
    text = PROMPT_TEMPLATES.get(template, template)
    with_input = text.split(SEPARATOR)[0]
    missing = [p for p in ("{instruction}", "{input}") if p not in with_input]
    if missing:
        # Without {input} every example's input would be dropped silently.
        raise PromptError(
            f"prompt template must contain {' and '.join(repr(p) for p in missing)} (before any '{SEPARATOR}') "
            f"or be one of {sorted(PROMPT_TEMPLATES)}; got {template!r}"
        )
    return text


def format_prompt(template: str, instruction: str, input: str = "") -> str:
    """The prompt text for one example (everything before the response)."""
    text = resolve_template(template)
    with_input, _, without_input = text.partition(SEPARATOR)
    chosen = without_input if (not input and without_input) else with_input
    return chosen.replace("{instruction}", instruction).replace("{input}", input)


def instruction_turns(instruction: str, input: str, output: str) -> list[dict[str, str]]:
    """An instruction example as a conversation: the instruction (and its input after a blank line) as the
    user's turn, the output as the assistant's."""
    user = f"{instruction}\n\n{input}" if input else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation through the tokenizer's chat template, split for response-only loss.

    `messages` ends with the assistant's turn the model learns. The prompt is every turn before it plus
    the template's generation prompt (what the model sees when asked to answer); the response is that
    turn's text as the template renders it, up to and including the tokenizer's EOS token (the
    end-of-turn token of chat models, e.g. `<|im_end|>`; added when the template does not render it);
    what the template writes after it (a newline) is neither trained nor generated. The two parts are
    tokenised separately without added special tokens (the template writes its own), so the boundary
    is exact.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("the prompt template 'chat' needs a tokenizer with a chat template; this one has none")
    if not messages or messages[-1].get("role") != "assistant":
        raise PromptError("a chat example must end with the assistant's turn (the response the model learns)")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    if not whole.startswith(prompt):
        raise PromptError("the tokenizer's chat template does not render the conversation before the last turn, "
                          "with its generation prompt, as the start of the whole conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    response_ids = response_ids[: response_ids.index(eos) + 1] if eos in response_ids else response_ids + [eos]
    return prompt_ids, response_ids
