"""redismigrate: change the schema of a live Redis Search index and keep every document."""

from redismigrate.aio.batch import AsyncBatchMigrationExecutor, AsyncBatchMigrationPlanner
from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.inspector import AsyncIndexInspector
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.backup import VectorBackup
from redismigrate.capabilities import ServerCapabilities
from redismigrate.errors import (
    BadInputError,
    ConnectionFailed,
    IndexNotFound,
    RedisMigrateError,
    SchemaError,
    SearchModuleMissing,
)
from redismigrate.estimate import MigrationEstimate
from redismigrate.ftinfo import IndexStats
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.quantize import encode_query
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema
from redismigrate.sync import (
    BatchMigrationExecutor,
    BatchMigrationPlanner,
    IndexInspector,
    MigrationExecutor,
    MigrationPlanner,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncBatchMigrationExecutor",
    "AsyncBatchMigrationPlanner",
    "AsyncIndexInspector",
    "AsyncMigrationExecutor",
    "AsyncMigrationPlanner",
    "BadInputError",
    "BatchMigrationExecutor",
    "BatchMigrationPlanner",
    "ConnectionFailed",
    "IndexInspector",
    "IndexNotFound",
    "IndexSchema",
    "IndexStats",
    "MigrationEstimate",
    "MigrationExecutor",
    "MigrationPlan",
    "MigrationPlanner",
    "MigrationReport",
    "RedisMigrateError",
    "SchemaError",
    "SchemaPatch",
    "SearchModuleMissing",
    "ServerCapabilities",
    "VectorBackup",
    "__version__",
    "encode_query",
]
