"""CPU training kernels (fused LoRA, lean RMSNorm/SwiGLU, packed attention, fast dropout).

One switch turns them on or off: train.cpu_kernels, decided in prepare.py.
"""
