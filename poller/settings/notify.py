"""Settings for notifications (the ``notify:`` section)::

    notify:
      webhooks:
        - url: https://hooks.slack.com/services/...
          format: slack            # slack | json
          events: [update.succeeded, update.failed, approval.requested]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from poller.settings.base import SettingsModel


class WebhookConfig(SettingsModel):
    url: SecretStr = Field(description="where to POST (kept secret: webhook URLs carry tokens)")
    format: Literal["slack", "json"] = "slack"
    events: list[str] | None = Field(None, description="event names or prefixes ('update.'); default: all")
    timeout: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def wants(self, event: str) -> bool:
        if self.events is None:
            return True
        return any(event == e or (e.endswith(".") and event.startswith(e)) or e == "*"
                   for e in self.events)


class NotifyConfig(SettingsModel):
    webhooks: list[WebhookConfig] = Field(default_factory=list)
