"""Exception hierarchy: raising a ``TransientError`` means "retry the delivery"."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or invalid; raised at start, naming the setting."""


class TransientError(PipelineError):
    """A failure worth retrying (network, quota, 5xx): the event is redelivered."""


class PermanentError(PipelineError):
    """A failure that retrying cannot fix: recorded on the job, event acknowledged."""


class NotFound(PipelineError):
    """A document or object that should exist does not."""
