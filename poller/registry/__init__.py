"""The image registry, behind one narrow client."""

from poller.registry.client import Manifest, RegistryClient

__all__ = ["Manifest", "RegistryClient"]
