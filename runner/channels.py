"""Where notifications go: the `[notify:NAME]` sections (email through SMTP, or a JSON POST to a
webhook), a job's alert settings (`notify`, `notify_every`, `ping_url`, ...), how each is read from
the INI and how a message is delivered. Deciding *when* to notify is runner.notify's business."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.mail import SMTP_SECURITIES, SmtpServer
from runner.settings import mask_url_password, mask_url_path

if TYPE_CHECKING:
    from runner.config import SectionReader
    from runner.enums import NoticeEvent

CHANNEL_TYPES = ("email", "webhook")
WEBHOOK_FORMATS = ("json", "slack")
WEBHOOK_KEYS = ("url", "format")  # every other key of NOTIFY_KEYS but `type` is an email key
DEFAULT_NOTIFY_EVERY_S = 3600.0  # failures of one job within this send one notification
DEFAULT_NOTIFY_TIMEOUT_S = 10.0  # one delivery (SMTP conversation, webhook POST) at most
DEFAULT_PING_TIMEOUT_S = 5.0  # one dead-man ping at most: a down monitor never holds a job longer
MAX_RESPONSE_BYTES = 64 * 1024  # what we read of a webhook's or monitor's answer
NOTIFY_KEYS = {
    "type": "email or webhook",
    "smtp_host": "email: the mail server",
    "smtp_port": "email: its port (default: 587 for starttls, 465 for ssl, 25 for none)",
    "smtp_security": "email: starttls (default), ssl or none",
    "smtp_user": "email: login name",
    "smtp_password": "email: login password (put it in ${env:NAME})",
    "smtp_cafile": "email: certificates to trust for the server (an internal CA)",
    "sender": "email: the From address (default runner@localhost)",
    "to": "email: recipients, separated by commas",
    "url": "webhook: the http(s) URL the JSON is POSTed to (put a token in ${env:NAME})",
    "format": 'webhook: json (every field) or slack (a {"text": ...} payload chat webhooks take)',
}
_NAMES = re.compile(r"[\s,]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DeliveryError(Exception):
    """A notification or ping that did not arrive; str() is one line without secrets."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification: what happened to which job, in a subject line and a plain-text body."""

    job: str
    event: NoticeEvent
    subject: str
    text: str
    fields: Mapping[str, Any] = field(default_factory=dict)  # for JSON: run_id, status, error, ...


@dataclass(frozen=True, slots=True)
class EmailChannel:
    name: str
    server: SmtpServer
    to: tuple[str, ...]
    sender: str = "runner@localhost"

    def describe(self) -> str:
        return f"email to {', '.join(self.to)} via {self.server.address}"

    def deliver(self, notice: Notice, timeout_s: float) -> None:
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        from runner.mail import MailError, send_mail

        message = EmailMessage()
        message["Subject"] = notice.subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="runner.notify")
        message.set_content(notice.text)
        try:
            send_mail(message, replace(self.server, timeout_s=timeout_s))
        except MailError as exc:
            raise DeliveryError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class WebhookChannel:
    name: str
    url: str = field(repr=False)
    format: str = "json"  # json | slack

    def describe(self) -> str:
        return f"webhook {mask_url_path(self.url)} ({self.format})"

    def deliver(self, notice: Notice, timeout_s: float) -> None:
        import json

        if self.format == "slack":
            payload: dict[str, Any] = {"text": f"{notice.subject}\n{notice.text}"}
        else:
            payload = {"job": notice.job, "event": str(notice.event), **notice.fields}
            payload.update(subject=notice.subject, text=notice.text)
        post(self.url, json.dumps(payload).encode(), "application/json", timeout_s)


@dataclass(frozen=True, slots=True)
class UnusableChannel:
    """A section whose ${env:NAME} is not set here: every delivery fails saying so, while the
    jobs that use it still run."""

    name: str
    problem: str

    def describe(self) -> str:
        return f"unusable: {self.problem}"

    def deliver(self, notice: Notice, timeout_s: float) -> None:
        raise DeliveryError(self.problem)


Channel = EmailChannel | WebhookChannel | UnusableChannel


@dataclass(frozen=True, slots=True)
class Alerts:
    """A job's alert settings: who is told (channels), how often, and its dead-man ping URL."""

    channels: tuple[Channel, ...] = ()
    every_s: float = DEFAULT_NOTIFY_EVERY_S
    timeout_s: float = DEFAULT_NOTIFY_TIMEOUT_S
    ping_url: str | None = field(default=None, repr=False)
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S

    @property
    def active(self) -> bool:
        return bool(self.channels or self.ping_url)


def post(url: str, body: bytes, content_type: str, timeout_s: float) -> None:
    """POST `body`; a connection error, a timeout or an HTTP error status is a DeliveryError
    naming the URL with its path masked."""
    import http.client
    import urllib.error
    import urllib.request

    from runner.version import __version__

    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "User-Agent": f"runner/{__version__}"},
    )
    where = mask_url_path(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{where} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        cause = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise DeliveryError(f"{where}: {mask_url_password(cause)}") from None
    except (OSError, http.client.HTTPException) as exc:  # a timeout while reading the answer
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DeliveryError(f"{where}: {cause}") from None


# --- reading the INI ---------------------------------------------------------------------------------


def read_channel(name: str, reader: SectionReader) -> Channel:
    """One `[notify:NAME]` section."""
    reader.refuse_unknown(NOTIFY_KEYS)
    kind = reader.choice("type", CHANNEL_TYPES, None)
    if kind is None:
        raise reader.error("type", "missing; expected type = email or type = webhook")
    other = "email" if kind == "webhook" else "webhook"
    for key in reader.values:
        if key != "type" and (key in WEBHOOK_KEYS) != (kind == "webhook"):
            raise reader.error(key, f"only means something in a {other} section (type = {other})")
    if kind == "webhook":
        return WebhookChannel(
            name,
            read_url(reader, "url", required=True) or "",
            reader.choice("format", WEBHOOK_FORMATS, "json"),
        )
    host = reader.text("smtp_host")
    if not host:
        raise reader.error("smtp_host", "missing: an email channel needs its mail server (smtp_host = HOST)")
    to = tuple(a.strip() for a in (reader.text("to") or "").split(",") if a.strip())
    if not to:
        raise reader.error("to", "missing: an email channel needs recipients (to = ops@example.com)")
    cafile = reader.text("smtp_cafile")
    server = SmtpServer(
        host=host,
        port=reader.int("smtp_port", 0, minimum=0, maximum=65535),
        security=reader.choice("smtp_security", SMTP_SECURITIES, "starttls"),
        user=reader.text("smtp_user"),
        password=reader.raw("smtp_password"),
        cafile=reader.folder("smtp_cafile", Path()) if cafile else None,
    )
    return EmailChannel(name, server, to, reader.text("sender", "runner@localhost") or "runner@localhost")


def read_url(reader: SectionReader, key: str, *, required: bool = False) -> str | None:
    """An http:// or https:// URL; errors show it with its path masked (it may hold a token)."""
    from urllib.parse import urlsplit

    url = reader.text(key)
    if url is None:
        if required:
            raise reader.error(key, "missing: expected an http:// or https:// URL")
        return None
    shown = mask_url_path(url)
    if _CONTROL.search(url):
        raise reader.error(key, "holds a newline or control character", value=shown)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise reader.error(
            key, "not a URL; expected http://HOST/... or https://HOST/...", value=shown
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise reader.error(key, "expected an http:// or https:// URL", value=shown)
    return url


def read_alerts(
    reader: SectionReader, channels: Mapping[str, Channel], defaults: Alerts, *, job: bool
) -> Alerts:
    """The alert keys of `[runner]` (the defaults, `job` False) or of a job section."""
    picked = defaults.channels
    if "notify" in reader:
        names = [n for n in _NAMES.split(reader.text("notify", "") or "") if n]
        if [n.lower() for n in names] == ["none"]:
            names = []
        for name in names:
            if name not in channels:
                known = ", ".join(sorted(channels)) or "none: add a [notify:NAME] section"
                raise reader.error(
                    "notify", f"no [notify:{name}] section; expected one of: {known}", value=name
                )
        picked = tuple(channels[n] for n in dict.fromkeys(names))
    return Alerts(
        channels=picked,
        every_s=reader.duration("notify_every", defaults.every_s),
        timeout_s=reader.duration("notify_timeout", defaults.timeout_s, minimum=0.1),
        ping_url=read_url(reader, "ping_url") if job else None,
        ping_timeout_s=reader.duration("ping_timeout", defaults.ping_timeout_s, minimum=0.1),
    )
