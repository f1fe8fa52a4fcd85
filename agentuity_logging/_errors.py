"""The exceptions ``agentuity_logging`` raises, all under one base class."""

from __future__ import annotations

__all__ = ["AgentuityLoggingError", "ConfigurationError", "MissingDependencyError"]


class AgentuityLoggingError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(AgentuityLoggingError, ValueError):
    """A configuration value (argument or environment variable) is malformed.

    Raised at ``configure()`` time so that a bad setting fails fast instead of crashing a log call later.
    """


class MissingDependencyError(ImportError, AgentuityLoggingError):
    """An optional integration was used without the extra that provides it."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        self.feature = feature
        self.module = module
        self.extra = extra
        super().__init__(
            f"{feature} needs {module!r}: pip install 'agentuity-logging[{extra}]'",
            name=module,
        )


def require(module: str, *, feature: str, extra: str) -> object:
    """Import an optional ``module`` or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(feature, module, extra) from exc
