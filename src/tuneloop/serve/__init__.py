"""The OpenAI-compatible server: model pool (engine), request guard, routes (app), CLI."""
