"""Send notifications to the configured webhooks: Slack-compatible or plain JSON.

A failing webhook is logged and forgotten: notifying never raises into the caller, so a
broken chat integration cannot stop an update.
"""

from __future__ import annotations

import time
from typing import Any

from poller.http import make_session, request
from poller.logs import get_logger
from poller.notify_settings import NotifyConfig

log = get_logger(__name__)

_ICONS = {"succeeded": ":white_check_mark:", "failed": ":x:", "requested": ":raised_hand:"}


def slack_payload(event: str, text: str, fields: dict[str, Any]) -> dict:
    icon = _ICONS.get(event.rsplit(".", 1)[-1], ":information_source:")
    lines = [f"*{k}*: {v}" for k, v in fields.items() if v not in (None, "")]
    return {"text": f"{icon} {text}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {text}"}},
                       *([{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
                         if lines else [])]}


class Notifier:
    def __init__(self, cfg: NotifyConfig, *, session=None):
        self.cfg = cfg
        self.session = session or make_session("notify", timeout=(5.0, 10.0))

    def send(self, event: str, text: str, **fields: Any) -> int:
        """Post to every webhook that wants ``event``; returns how many accepted it."""
        ok = 0
        for hook in self.cfg.webhooks:
            if not hook.wants(event):
                continue
            try:
                body = (slack_payload(event, text, fields) if hook.format == "slack"
                        else {"event": event, "text": text, "at": time.time(), **fields})
                request(self.session, "POST", hook.url.get_secret_value(), upstream="notify",
                        json=body, timeout=hook.timeout)
                ok += 1
            except Exception as exc:  # never into the caller
                log.warning("notify.failed", notification=event, error=str(exc))
        return ok
