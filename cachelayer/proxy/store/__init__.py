"""Layer 2: answer exact repeats from the response store; store complete misses."""
