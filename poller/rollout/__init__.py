"""Gradual release over game servers: canary then steps, low-priority first, busy ones later."""
