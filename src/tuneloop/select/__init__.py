"""Choose a base model by measurement: each candidate scored in its own process, then ranked."""
