"""Settings for notifications (the ``notify:`` section)."""

from poller.config_base import SettingsModel


class NotifyConfig(SettingsModel):
    pass
