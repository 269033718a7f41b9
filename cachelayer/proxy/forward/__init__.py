"""Layer 3, proxy side: send misses upstream, relay the answer, map upstream errors."""
