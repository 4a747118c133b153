"""taskiq_flow.cache."""
