"""llamatune: LoRA fine-tuning of Llama-3.2-Instruct on FineTome and function calling, GGUF export,
honest evaluation, and a CPU tool-using agent. Heavy libraries (torch, transformers, llama_cpp) are only
imported inside the functions that need them, so ``import llamatune`` stays fast."""

__version__ = "0.1.0"
