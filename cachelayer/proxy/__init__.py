"""The caching proxy: the edge and the three layers, wired in app.py."""
