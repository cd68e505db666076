"""Sources: where code comes from. One module per kind, all behind :class:`Source`."""

from poller.sources.base import RefSnapshot, Source

__all__ = ["RefSnapshot", "Source"]
