"""After shipping: the traffic store, drift signals, and the retrain-and-gate loop."""
