"""The proxy's layers: edge (parse, errors), prefix (1), store (2), forward (3)."""
