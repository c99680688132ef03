"""Exceptions raised by redismigrate.

Every error a user can cause carries one line of text that names the problem;
the CLI prints that line and exits with ``exit_code``.
"""

from __future__ import annotations


class RedisMigrateError(Exception):
    """Base class of every error redismigrate raises on purpose."""

    exit_code = 1


class BadInputError(RedisMigrateError):
    """The caller gave something unusable: a file, a URL, a name, an option."""

    exit_code = 2


class SchemaError(BadInputError):
    """A schema or patch file does not describe a valid index."""


class ConnectionFailed(BadInputError):
    """The Redis server could not be reached or refused the connection."""


class IndexNotFound(BadInputError):
    """The named index does not exist on the server."""


class SearchModuleMissing(BadInputError):
    """The server answers but has no search module (RediSearch / Query Engine)."""


class ServerReplyError(RedisMigrateError):
    """The server returned a reply redismigrate cannot understand."""


class MigrationLocked(BadInputError):
    """Another run holds the index's lock or the backup directory; nothing was touched."""

    exit_code = 4


class LockLost(RedisMigrateError):
    """A run's lock expired or was taken over while it ran, so the run stopped."""


class Interrupted(RedisMigrateError):
    """The user interrupted a run (Ctrl+C); the message says how to finish it."""

    exit_code = 130
