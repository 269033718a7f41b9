"""Routes that are not completions: admin (models, health, stats, clear), count_tokens."""
