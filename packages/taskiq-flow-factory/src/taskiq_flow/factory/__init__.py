"""taskiq_flow.factory."""
