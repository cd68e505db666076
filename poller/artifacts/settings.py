"""Settings for plugin artifacts (the ``plugins:`` section). Filled in by issue 6."""

from poller.config_base import SettingsModel


class PluginsConfig(SettingsModel):
    pass
