"""Workflows that span stages: the quickstart and the learning curve."""
