"""CPU training kernels (fused LoRA, lean RMSNorm/SwiGLU, packed attention, fast dropout), behind train.cpu_kernels."""
