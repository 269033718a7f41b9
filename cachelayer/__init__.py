"""cachelayer: a caching proxy that removes repeated prefill for coding agents on local MLX."""

__version__ = "0.1.0"
