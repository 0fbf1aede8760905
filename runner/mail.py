"""Handing a mail to an SMTP server (STARTTLS, implicit TLS or plain, with an optional login): the
one copy that failure notifications and jobs (weekly_report) share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.message import EmailMessage

SMTP_TIMEOUT_S = 30.0
SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}  # the usual port of each kind of security
SMTP_SECURITIES = tuple(SMTP_PORTS)


class MailError(Exception):
    """The server could not be reached or refused the mail; str() is one line."""

    def __init__(self, server: SmtpServer, cause: str) -> None:
        self.server = server
        self.cause = " ".join(cause.split())
        super().__init__(f"could not send through {server.address} ({server.security}): {self.cause}")


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where mail goes and how we log in. `port` 0: the usual port of `security`."""

    host: str
    port: int = 0
    security: str = "starttls"  # starttls | ssl | none
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: Path | None = None  # certificates to trust (an internal CA); None: the system's
    timeout_s: float = SMTP_TIMEOUT_S

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port or SMTP_PORTS[self.security]}"


def send_mail(message: EmailMessage, server: SmtpServer) -> None:
    """Send `message` to the recipients in its To and Cc headers; any failure is a MailError."""
    import smtplib
    import ssl

    port = server.port or SMTP_PORTS[server.security]
    try:
        context = ssl.create_default_context(cafile=str(server.cafile) if server.cafile else None)
        if server.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host, port, timeout=server.timeout_s, context=context
            )
        else:
            client = smtplib.SMTP(server.host, port, timeout=server.timeout_s)
        with client:
            if server.security == "starttls":
                client.starttls(context=context)
            if server.user:
                client.login(server.user, server.password or "")
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        cause = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise MailError(server, cause) from None
