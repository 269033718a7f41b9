"""Counters, usage accounting, the metrics file, Prometheus, logging and request ids."""
