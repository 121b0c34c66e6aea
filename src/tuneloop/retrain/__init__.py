"""Retrain on reviewed traffic, gate the challenger, promote only on a significant win."""
