"""Policies: which refs become which images. One small module per strategy."""
