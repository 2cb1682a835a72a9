"""cofitune-ray: CoFiTune's coarse-to-fine search for the part of an LLM to fine-tune, on Ray."""

__version__ = "0.1.0"
