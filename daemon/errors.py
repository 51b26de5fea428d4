"""Errors the service raises; the gRPC layer maps each class to one status code."""

from __future__ import annotations


class WardenError(Exception):
    """Base: the message is for a person and says what to do."""


class InvalidArgument(WardenError):
    pass


class NotFound(WardenError):
    pass


class PermissionDenied(WardenError):
    pass


class Unauthenticated(WardenError):
    pass


class FailedPrecondition(WardenError):
    pass


class ResourceExhausted(WardenError):
    pass


class Unavailable(WardenError):
    """A host part the request needs is missing (no TPM, no IMA...)."""
