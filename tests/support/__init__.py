"""Helpers shared by the test suites: real servers on free ports, a scripted upstream, the
one way to wait (wait.py), the waits for a proxy's store writes (store_writes.py) and a
backend's KV writes (kv_writes.py), and the tiny random-weight test models
(family_models.py, variant_models.py; the demo model is the package's own)."""
