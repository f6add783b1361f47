"""Errors and warnings as values, each with a location a user can act on.

A diagnostic names the file and line, the resource (kind, namespace/name) and the field path, the way
`kubectl apply` names the object and field it rejects. The library never prints: the CLI renders these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Severity(str, Enum):
    ERROR = "Error"
    WARNING = "Warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int
    severity: Severity
    message: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    field: str = ""

    @property
    def resource(self) -> str:
        if not self.kind:
            return ""
        name = self.name or "<unnamed>"
        ident = f"{self.namespace}/{name}" if self.namespace else name
        return f"{self.kind} {ident}".strip()

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where, self.severity.value.lower()]
        head = ": ".join(parts)
        subject = self.resource
        if self.field:
            subject = f"{subject}: {self.field}" if subject else self.field
        return f"{head}: {subject}: {self.message}" if subject else f"{head}: {self.message}"

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.render()


def error(file: str, line: int, message: str, **where: str) -> Diagnostic:
    return Diagnostic(file=file, line=line, severity=Severity.ERROR, message=message, **where)


def warning(file: str, line: int, message: str, **where: str) -> Diagnostic:
    return Diagnostic(file=file, line=line, severity=Severity.WARNING, message=message, **where)
