"""Typed errors. Each carries a fix-it hint; only the CLI and the server map them to exit codes
and HTTP statuses, always by class."""

from __future__ import annotations


class TipoError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def first_line(error: BaseException) -> str:
    """An error's first line, for a message that wraps it (its type's name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class InvalidRequestError(TipoError, ValueError):
    """The caller's input cannot be turned into a request (bad option, bad JSON, bad template)."""


class ModelNotFoundError(TipoError):
    """No checkpoint at the given path, or not downloadable (offline, unknown hub id)."""


class CheckpointError(TipoError):
    """A checkpoint exists but cannot be used (corrupt config, missing weights, other arch)."""


class MissingDependencyError(TipoError, ImportError):
    """An optional dependency is needed for this feature; the hint names the extra to install."""

    @classmethod
    def for_extra(cls, package: str, extra: str, feature: str) -> MissingDependencyError:
        return cls(
            f"{feature} needs the Python package '{package}', which is not installed.",
            hint=f'pip install "tipo-prompt[{extra}]"',
        )


class BackendError(TipoError):
    """A backend failed while loading or generating."""


__all__ = [
    "BackendError",
    "CheckpointError",
    "InvalidRequestError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "TipoError",
    "first_line",
]
