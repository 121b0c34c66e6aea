"""Training: PEFT method configs, the Accelerate loop, checkpoints, cost estimates."""
