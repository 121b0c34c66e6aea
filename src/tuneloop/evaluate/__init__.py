"""Evaluation: batched scoring and generation, task metrics, baselines, learning curves."""
