"""Layer 3: an mlx-lm server whose prompt KV caches persist on disk, plus the demo model."""
