"""Settings for the deployment updater (the ``updates:`` section). Filled in by issue 5."""

from poller.config_base import SettingsModel


class UpdatesConfig(SettingsModel):
    pass
