"""Settings for fleet rollouts (the ``fleet:`` section). Filled in by issue 6."""

from poller.config_base import SettingsModel


class FleetConfig(SettingsModel):
    pass
