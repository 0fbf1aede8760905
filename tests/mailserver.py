"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 (a free port), in a thread."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

SMTP_USER, SMTP_PASSWORD = "reports", "s3cret-pass"


class MailServer:
    """aiosmtpd on 127.0.0.1 (a free port), in a thread: plain, STARTTLS or implicit TLS, with a login."""

    def __init__(self, security: str, cert: Path | None = None) -> None:
        from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

        self.security = security
        self.messages: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, cert.with_suffix(".key"))

        def check(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
            good = isinstance(data, LoginPassword) and (data.login, data.password) == (
                SMTP_USER.encode(),
                SMTP_PASSWORD.encode(),
            )
            return AuthResult(success=good)

        def protocol() -> SMTP:
            return SMTP(
                self,
                hostname="127.0.0.1",
                tls_context=context if security == "starttls" else None,
                require_starttls=security == "starttls",
                auth_required=cert is not None,
                # aiosmtpd does not see implicit TLS as TLS: the socket is encrypted all the same.
                auth_require_tls=security != "ssl",
                authenticator=check if cert is not None else None,
            )

        self.thread.start()
        serving = self.loop.create_server(
            protocol, "127.0.0.1", 0, ssl=context if security == "ssl" else None
        )
        self.server = asyncio.run_coroutine_threadsafe(serving, self.loop).result(timeout=30)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
