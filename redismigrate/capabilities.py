"""What a server's search module can do, from its version. Pure code."""

from __future__ import annotations

import msgspec

from redismigrate.schema import IndexSchema, VectorField

# (minimum search module version, what it adds)
_DATATYPES_SINCE: dict[str, tuple[int, int, int]] = {
    "float32": (2, 4, 0),
    "float64": (2, 4, 0),
    "float16": (2, 10, 0),
    "bfloat16": (2, 10, 0),
    "int8": (8, 0, 0),
    "uint8": (8, 0, 0),
}
_ALGORITHMS_SINCE: dict[str, tuple[int, int, int]] = {
    "flat": (2, 4, 0),
    "hnsw": (2, 4, 0),
    "svs-vamana": (8, 2, 0),
}
SVS_DATATYPES = ("float16", "float32")
# FT.CREATE ... INDEXALL: search 2.10.5 answers "Unknown argument `INDEXALL`" (measured)
INDEXALL_SINCE = (8, 0, 0)


def parse_module_version(number: int) -> tuple[int, int, int]:
    """MODULE LIST's integer version (``21005``) as ``(2, 10, 5)``."""
    return number // 10000, (number // 100) % 100, number % 100


class ServerCapabilities(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The search module's version and the vector options it accepts."""

    redis_version: str
    search_version: tuple[int, int, int]
    json_version: tuple[int, int, int] | None = None

    @property
    def search_version_text(self) -> str:
        return ".".join(str(p) for p in self.search_version)

    @property
    def vector_datatypes(self) -> list[str]:
        return [d for d, since in _DATATYPES_SINCE.items() if self.search_version >= since]

    @property
    def vector_algorithms(self) -> list[str]:
        return [a for a, since in _ALGORITHMS_SINCE.items() if self.search_version >= since]

    @property
    def has_json(self) -> bool:
        return self.json_version is not None

    def supports_datatype(self, datatype: str) -> bool:
        return datatype in self.vector_datatypes

    def supports_algorithm(self, algorithm: str) -> bool:
        return algorithm in self.vector_algorithms

    def problems_with(self, schema: IndexSchema) -> list[str]:
        """Every reason this server would refuse ``schema``, in words."""
        problems: list[str] = []
        if schema.storage_type == "json" and not self.has_json:
            problems.append("the server has no JSON module, so it cannot index JSON documents")
        if schema.index.options.indexes_all and self.search_version < INDEXALL_SINCE:
            problems.append(
                "INDEXALL (indexes_all) needs search module 8.0 or newer; this server has "
                f"{self.search_version_text}"
            )
        for field in schema.fields:
            if not isinstance(field, VectorField):
                continue
            a = field.attrs
            if not self.supports_datatype(a.datatype):
                since = ".".join(map(str, _DATATYPES_SINCE[a.datatype]))
                problems.append(
                    f"vector field {field.name!r}: datatype {a.datatype} needs search module "
                    f"{since} or newer; this server has {self.search_version_text}"
                )
            if not self.supports_algorithm(a.algorithm):
                since = ".".join(map(str, _ALGORITHMS_SINCE[a.algorithm]))
                problems.append(
                    f"vector field {field.name!r}: algorithm {a.algorithm.upper()} needs search "
                    f"module {since} or newer; this server has {self.search_version_text}"
                )
            if a.algorithm == "svs-vamana" and a.datatype not in SVS_DATATYPES:
                problems.append(
                    f"vector field {field.name!r}: SVS-VAMANA takes only float16 or float32 "
                    f"vectors, not {a.datatype}"
                )
        return problems
