"""LLaMA-family model: architecture description, layer-range module, loader, KV cache."""
