"""redismigrate: change the schema of a live Redis Search index and keep every document."""

from redismigrate.capabilities import ServerCapabilities
from redismigrate.errors import (
    BadInputError,
    ConnectionFailed,
    IndexNotFound,
    RedisMigrateError,
    SchemaError,
    SearchModuleMissing,
)
from redismigrate.ftinfo import IndexStats
from redismigrate.schema import IndexSchema

__version__ = "0.1.0"

__all__ = [
    "BadInputError",
    "ConnectionFailed",
    "IndexNotFound",
    "IndexSchema",
    "IndexStats",
    "RedisMigrateError",
    "SchemaError",
    "SearchModuleMissing",
    "ServerCapabilities",
    "__version__",
]
