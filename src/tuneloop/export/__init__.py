"""Export a run where people run models: merged safetensors, GGUF (+ Ollama Modelfile), parity
checks, model cards, and the adapter check for serving engines (vLLM, LoRAX)."""
