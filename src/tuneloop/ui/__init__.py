"""The web app (`tuneloop ui`): pages over a project's runs, evaluations, data, registry and
traffic, with human review that feeds the next retrain. Server-rendered, no network at run time.
"""
