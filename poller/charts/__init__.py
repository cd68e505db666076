"""Chart pipeline: watch a Helm repository for new chart versions and hand them to the
helm API (:mod:`.index`, :mod:`.watcher`), and push charts to ChartMuseum (:mod:`.push`)."""
