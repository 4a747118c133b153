"""taskiq_flow.middlewares."""
