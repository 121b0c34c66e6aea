"""Export a run where people run models: merged safetensors (more formats to come)."""
