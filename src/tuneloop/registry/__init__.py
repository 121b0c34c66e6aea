"""The model registry: versions copied from runs, champion/challenger aliases, atomic on disk."""
