"""Where layer 2 keeps answers: diskcache on local disk (disk.py)."""
