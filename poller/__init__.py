"""Slipway poller: watches sources, builds and pushes images, reconciles against the registry."""

__version__ = "0.1.0"
