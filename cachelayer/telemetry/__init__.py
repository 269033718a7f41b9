"""A leaf: counter names, log context, and renderers of the layers' snapshots (the metrics
file, Prometheus text, the access line); imports nothing from proxy/ or cli/."""
