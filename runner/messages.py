"""What the daemon, its fork server and the supervisor workers say to each other: one JSON object
a line over a stream socket. A fork server first says what code it loaded (`Hello`); then a fire
to run goes down (`FireRequest`), its exit code comes back (`FireReply`); `Command`s steer the
server and the workers. Both ends build and read them here."""

from __future__ import annotations

import enum
import json
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.context import Fire

NOT_CLAIMED = -2  # a FireReply's code: the database failed before the fire was claimed (it is still free)


class Command(enum.StrEnum):
    STOP = "stop"  # daemon -> server: stop every worker (running jobs become 'killed'), then exit
    RETIRE = "retire"  # daemon -> server: take no new fire; exit once the running ones are recorded
    EXIT = "exit"  # server -> worker: exit once the current fire (if any) is recorded

    def to_message(self) -> dict[str, Any]:
        return {"cmd": self}


@dataclass(frozen=True, slots=True)
class FireRequest:
    """One fire of a configured job for a worker to run; `resume` is the row of a retry a stop cut
    short. The fork server's handle numbers each request (`id`) to match the reply."""

    job: str
    fire: Fire
    resume: int | None = None
    id: int = 0

    def to_message(self) -> dict[str, Any]:
        fire = self.fire
        return {
            "id": self.id,
            "job": self.job,
            "trigger": fire.kind,
            "key": fire.key,
            "scheduled_at": fire.scheduled_at.isoformat() if fire.scheduled_at else None,
            "late": fire.late,
            "paths": [str(p) for p in fire.paths],
            "due_at": fire.due_at.isoformat() if fire.due_at else None,
            "resume": self.resume,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> FireRequest:
        fire = Fire(
            kind=message["trigger"],
            key=message["key"],
            scheduled_at=_datetime(message.get("scheduled_at")),
            late=message.get("late", False),
            paths=tuple(Path(p) for p in message.get("paths") or ()),
            due_at=_datetime(message.get("due_at")),
        )
        return cls(job=message["job"], fire=fire, resume=message.get("resume"), id=message.get("id", 0))


@dataclass(frozen=True, slots=True)
class FireReply:
    """How request `id` ended: `runner run`'s exit code, GONE, or NOT_CLAIMED."""

    id: int
    code: int

    def to_message(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> FireReply:
        return cls(id=message["id"], code=message["code"])


@dataclass(frozen=True, slots=True)
class Hello:
    """A fork server's first line, once its job modules are imported: the code it runs (runner's
    version, `runner.codeversion`), each job's overlap policy, and the configured jobs it cannot
    run with why; or `error`, why it could not start. Its shape stays the same across versions:
    a daemon reads it from a server of another runner version to refuse that server."""

    runner_version: str
    code_version: str = ""
    policies: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retries: dict[str, int] = field(default_factory=dict)  # per job: retries (a lost run's retry)

    def to_message(self) -> dict[str, Any]:
        return {"hello": asdict(self)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Hello | None:
        """The Hello in `message`, or None if it is not one."""
        hello = message.get("hello")
        if not isinstance(hello, dict):
            return None
        return cls(
            runner_version=str(hello.get("runner_version")),
            code_version=str(hello.get("code_version") or ""),
            policies=dict(hello.get("policies") or {}),
            broken=dict(hello.get("broken") or {}),
            retries={str(k): int(v) for k, v in (hello.get("retries") or {}).items()},
            error=hello.get("error"),
        )


def read_order(message: dict[str, Any]) -> FireRequest | Command:
    """A message sent down (daemon -> server -> worker): a command or a fire to run."""
    if "cmd" in message:
        return Command(message["cmd"])
    return FireRequest.from_message(message)


def send(sock: socket.socket, message: FireRequest | FireReply | Command | Hello) -> None:
    sock.sendall(json.dumps(message.to_message()).encode() + b"\n")


class Lines:
    """Newline-delimited JSON messages from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def read(self) -> list[dict[str, Any]]:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buffer += chunk
        messages = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            messages.append(json.loads(line))
        return messages


def _datetime(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
