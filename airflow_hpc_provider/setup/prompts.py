"""Asking the user, or (``--non-interactive``) saying which flag would have answered.

The set-up asks only what it cannot default (the name prefix, a region when none is configured,
subnets when the region has no default VPC) and, before it changes anything, whether to go ahead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from airflow_hpc_provider.errors import SetupError


@dataclass
class Prompter:
    interactive: bool
    read_line: Callable[[], str] = field(default_factory=lambda: sys.stdin.readline)
    out: TextIO = field(default_factory=lambda: sys.stderr)  # questions go to stderr: stdout stays the report (or JSON)

    def ask(self, question: str, *, flag: str, why: str, default: str | None = None) -> str:
        """An answer to ``question``; without a terminal to ask, an error naming ``flag``."""
        if not self.interactive:
            if default is not None:
                return default
            raise SetupError(f"{flag} is needed with --non-interactive: {why}")
        suffix = f" [{default}]" if default is not None else ""
        while True:
            self.out.write(f"{question}{suffix}: ")
            self.out.flush()
            line = self.read_line()
            if not line:
                raise SetupError(f"no answer for {flag} (end of input): {why}")
            answer = line.strip() or (default or "")
            if answer:
                return answer

    def confirm(self, question: str) -> bool:
        """True to go ahead; always true with --non-interactive (the flags were the answer)."""
        if not self.interactive:
            return True
        self.out.write(f"{question} [y/N]: ")
        self.out.flush()
        return self.read_line().strip().lower() in ("y", "yes")
