"""Spec errors that point at the YAML: ``file:line:column field.path: what was expected``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Mark:
    """A position in a source file, 1-based like editors show it."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one file."""

    mark: Mark | None
    field: str
    message: str
    profile: str | None = None  # found in the pipeline as built with this profile (spec.profiles)

    def __str__(self) -> str:
        where = str(self.mark) if self.mark else "<unknown>"
        message = self.message if self.profile is None else f"{self.message} (with profile '{self.profile}')"
        return f"{where} {self.field}: {message}" if self.field else f"{where} {message}"


class PipelineSpecError(ValueError):
    """All the problems found in a pipeline file (or a set of files)."""

    def __init__(self, issues: Iterable[SpecIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
