"""Models: the catalog of bundled models, loading (GGUF -> cached safetensors), tokens."""
