"""taskiq_flow.storage."""
