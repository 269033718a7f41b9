"""Layer 1: stabilise the prompt prefix, identify it, keep the token-savings ledger."""
