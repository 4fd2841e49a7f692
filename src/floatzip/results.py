"""What verify and check return."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VerifyResult:
    ok: bool
    problems: list[str]
