"""What a script run on a remote host gave back: below the transport (:mod:`.ssh`) and the
connection test (:mod:`.probe`), which both read it, so neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    exit_status: int | None  # None: the remote side closed without one (killed, link dropped)
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(errors="replace")
