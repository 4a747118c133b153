"""taskiq_flow.config."""
