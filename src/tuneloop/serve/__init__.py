"""The OpenAI-compatible server: model pool (engine), request guard and limits, routes (app),
error mapping, traffic store, CLI."""
