"""The ranges the server takes for every attribute of a schema. Pure code, no I/O.

A value out of these ranges is refused by ``FT.CREATE`` (or accepted there and then
breaks the index on its first document), which for a migration means after the old
index was dropped. The planner checks them up front: ``range_problems`` runs inside
``schema.validate_schema`` (so a schema file or a patch with ``m: -5`` is one line and
exit 2), and ``schema_problems`` adds what the planner otherwise leaves to the server
check, for the preflight's ``parameters`` line.

Each rule says where it comes from. "spec.c" is RediSearch/RediSearch src/spec.c, the
``FT.CREATE`` parser (``parseVectorField_hnsw``, ``parseVectorField_flat``,
``parseVectorField_svs``, ``parseTextField``, ``parseTagField``). Its integer
parameters are read by ``AC_GetSize`` (RediSearch/RediSearch src/rmutil/args.c, via
``AC_GetLongLong``: 0 to LLONG_MAX), with ``AC_F_GE1`` where it takes no 0; its
decimal ones by ``AC_GetDouble``, with ``AC_F_GE0`` where it takes no negative value.
Where the server takes any positive whole number the rule is ">= 1" and the upper
bound is LLONG_MAX, the largest the parser reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redismigrate.schema import (
    Field,
    IndexInfo,
    IndexSchema,
    TagField,
    TextField,
    VectorAttrs,
    VectorField,
    type_name,
)

# The largest whole number AC_GetSize reads (RediSearch src/rmutil/args.c: AC_GetSize goes
# through AC_GetLongLong, so 2**63 is "Could not convert argument to expected type").
LLONG_MAX = 2**63 - 1
# VectorSimilarity src/VecSim/vec_sim_common.h: DEFAULT_BLOCK_SIZE.
DEFAULT_BLOCK_SIZE = 1024


@dataclass(frozen=True)
class Range:
    """A closed range of numbers, whole or decimal, that an attribute takes."""

    low: float
    high: float | None = None
    whole: bool = True

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        if self.high is None and self.low == -math.inf:
            return kind
        if self.high is None:
            return f"{kind} >= {_shown(self.low)}"
        return f"{kind} from {_shown(self.low)} to {_shown(self.high)}"

    def admits(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return value >= self.low and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Limit:
    """The range of one attribute and the server's name for it, e.g. ``HNSW M``."""

    label: str
    range: Range

    def problem(self, attr: str, value: object) -> str | None:
        """None when ``value`` is in range, else ``m = -5 is out of range; ...``."""
        if self.range.admits(value):
            return None
        return f"{attr} = {value!r} is out of range; {self.label} takes {self.range.describe()}"


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


_DIM = Limit("DIM", Range(1, LLONG_MAX))  # spec.c: DIM is AC_GetSize with AC_F_GE1
# spec.c: INITIAL_CAP is AC_GetSize with no flag, so 0 is taken (FLAT and HNSW)
_INITIAL_CAP = Limit("INITIAL_CAP", Range(0, LLONG_MAX))

VECTOR_LIMITS: dict[str, dict[str, Limit]] = {
    "flat": {
        "dims": _DIM,
        "initial_cap": _INITIAL_CAP,
        # spec.c parseVectorField_flat: BLOCK_SIZE is AC_GetSize with AC_F_GE1
        "block_size": Limit("FLAT BLOCK_SIZE", Range(1, LLONG_MAX)),
    },
    "hnsw": {
        "dims": _DIM,
        "initial_cap": _INITIAL_CAP,
        # spec.c parseVectorField_hnsw takes M >= 1, but VectorSimilarity
        # src/VecSim/algorithms/hnsw/hnsw.h (HNSWIndex constructor) throws "HNSW index
        # parameter M cannot be 1" for M <= 1 and "M is too large: argument overflow" when
        # 2*M > UINT16_MAX. FT.CREATE still answers OK for those; on search 2.10.5 the first
        # vector written with M 1 or 32768 closed the server's connection.
        "m": Limit("HNSW M", Range(2, 32767)),
        # spec.c parseVectorField_hnsw: EF_CONSTRUCTION and EF_RUNTIME are AC_GetSize with
        # AC_F_GE1; EPSILON is AC_GetDouble with AC_F_GE0
        "ef_construction": Limit("HNSW EF_CONSTRUCTION", Range(1, LLONG_MAX)),
        "ef_runtime": Limit("HNSW EF_RUNTIME", Range(1, LLONG_MAX)),
        "epsilon": Limit("HNSW EPSILON", Range(0, whole=False)),
    },
    "svs-vamana": {
        "dims": _DIM,
        # spec.c parseVectorField_svs: GRAPH_MAX_DEGREE, CONSTRUCTION_WINDOW_SIZE,
        # SEARCH_WINDOW_SIZE and REDUCE are AC_GetSize with AC_F_GE1; EPSILON is
        # AC_GetDouble with AC_F_GE0
        "graph_max_degree": Limit("SVS-VAMANA GRAPH_MAX_DEGREE", Range(1, LLONG_MAX)),
        "construction_window_size": Limit(
            "SVS-VAMANA CONSTRUCTION_WINDOW_SIZE", Range(1, LLONG_MAX)
        ),
        "search_window_size": Limit("SVS-VAMANA SEARCH_WINDOW_SIZE", Range(1, LLONG_MAX)),
        "epsilon": Limit("SVS-VAMANA EPSILON", Range(0, whole=False)),
        # spec.c parseVectorField_svs: "Invalid TRAINING_THRESHOLD: cannot be lower than
        # DEFAULT_BLOCK_SIZE (1024)". Above 100 * DEFAULT_BLOCK_SIZE VectorSimilarity
        # src/VecSim/algorithms/svs/svs_tiered.h lowers it to SVS_MAX_TRAINING_THRESHOLD
        # (svs_utils.h) without a word, and redis/docs
        # content/develop/ai/search-and-query/vectors/_index.md says it "must be less than
        # 100 * DEFAULT_BLOCK_SIZE"; a larger value would not be the one the index uses.
        "training_threshold": Limit(
            "SVS-VAMANA TRAINING_THRESHOLD",
            Range(DEFAULT_BLOCK_SIZE, 100 * DEFAULT_BLOCK_SIZE),
        ),
        # REDUCE >= 1 (spec.c); its upper bound depends on dims, see _reduce_problem
    },
}

# spec.c parseVectorField_GetQuantBits (names VECSIM_LVQ_8 ... VECSIM_LEANVEC_8X8 of
# src/vector_index.h), compared without case (STR_EQCASE)
SVS_COMPRESSIONS = ("LVQ8", "LVQ4", "LVQ4x4", "LVQ4x8", "LeanVec4x8", "LeanVec8x8")
SVS_LEANVEC_COMPRESSIONS = ("LeanVec4x8", "LeanVec8x8")
# spec.c parseVectorField_svs: "Not supported data type is given. Expected: FLOAT16, FLOAT32"
SVS_DATATYPES = ("float16", "float32")

# spec.c parseTextField reads WEIGHT with AC_GetDouble and no flag: the server takes any
# number but NaN (search 2.10.5 even took "nan"), negative ones included (a negative
# weight demotes the field's matches, which some indexes do on purpose). Ours refuses
# only what makes every score NaN: NaN and the infinities.
TEXT_WEIGHT = Limit("TEXT WEIGHT", Range(-math.inf, whole=False))
# RediSearch src/rules.c SchemaRule_Create: SCORE outside 0..1 is "Invalid score"
INDEX_SCORE = Limit("SCORE", Range(0, 1, whole=False))
# RediSearch src/language.c (the table RSLanguage_Find looks in): any other LANGUAGE is
# "Invalid language"
LANGUAGES = (
    "arabic",
    "armenian",
    "basque",
    "catalan",
    "chinese",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hindi",
    "hungarian",
    "indonesian",
    "irish",
    "italian",
    "lithuanian",
    "nepali",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "serbian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
    "yiddish",
)


def tag_separator_problem(separator: str) -> str | None:
    """spec.c parseTagField: ``strlen(sep) != 1`` is "Tag separator must be a single
    character", so the separator is one byte: one ASCII character ("é" is two)."""
    if len(separator.encode("utf-8")) == 1:
        return None
    return (
        f"separator = {separator!r} is out of range; TAG SEPARATOR takes one single-byte "
        "(ASCII) character"
    )


def vector_attr_problems(a: VectorAttrs) -> list[str]:
    """Every out-of-range parameter of one vector field's attributes."""
    problems: list[str] = []
    for attr, limit in VECTOR_LIMITS.get(a.algorithm, {}).items():
        value = getattr(a, attr)
        if value is None:
            continue
        problem = limit.problem(attr, value)
        if problem is not None:
            problems.append(problem)
    if a.algorithm == "svs-vamana":
        problems.extend(_svs_problems(a))
    return problems


def _svs_problems(a: VectorAttrs) -> list[str]:
    problems: list[str] = []
    compression = None
    if a.compression is not None:
        compression = next(
            (c for c in SVS_COMPRESSIONS if c.lower() == a.compression.lower()), None
        )
        if compression is None:
            problems.append(
                f"compression = {a.compression!r} is out of range; SVS-VAMANA COMPRESSION "
                "takes one of " + ", ".join(SVS_COMPRESSIONS)
            )
    # spec.c parseVectorField_svs: "TRAINING_THRESHOLD is irrelevant when compression was
    # not requested"
    if a.training_threshold is not None and a.compression is None:
        problems.append(
            f"training_threshold = {a.training_threshold!r} needs a compression; "
            "SVS-VAMANA takes TRAINING_THRESHOLD only with COMPRESSION"
        )
    if a.reduce is not None:
        problem = _reduce_problem(a, compression)
        if problem is not None:
            problems.append(problem)
    return problems


def _reduce_problem(a: VectorAttrs, compression: str | None) -> str | None:
    # spec.c parseVectorField_svs: "REDUCE is irrelevant when compression is not of type
    # LeanVec"; REDUCE is AC_GetSize with AC_F_GE1. redis/docs
    # content/develop/ai/search-and-query/vectors/_index.md: "it should be less than DIM"
    # (the server does not check it; a reduced dimension that is not smaller reduces
    # nothing).
    if a.compression is not None and compression is None:
        return None  # an unknown compression, already reported
    if compression not in SVS_LEANVEC_COMPRESSIONS:
        return (
            f"reduce = {a.reduce!r} needs a LeanVec compression; SVS-VAMANA takes REDUCE "
            "only with COMPRESSION " + " or ".join(SVS_LEANVEC_COMPRESSIONS)
        )
    if a.dims < 2:
        return (
            f"reduce = {a.reduce!r} is out of range; a {a.dims}-dimension vector has no "
            "smaller dimension to reduce to"
        )
    return Limit("SVS-VAMANA REDUCE (below DIM)", Range(1, a.dims - 1)).problem("reduce", a.reduce)


def field_problems(field: Field) -> list[str]:
    """Every out-of-range attribute of ``field``, each as ``<type> field 'x': ...``."""
    problems: list[str] = []
    if isinstance(field, VectorField):
        problems = vector_attr_problems(field.attrs)
    elif isinstance(field, TextField):
        problem = TEXT_WEIGHT.problem("weight", field.attrs.weight)
        problems = [problem] if problem is not None else []
    elif isinstance(field, TagField) and field.attrs.separator is not None:
        problem = tag_separator_problem(field.attrs.separator)
        problems = [problem] if problem is not None else []
    return [f"{type_name(field)} field {field.name!r}: {p}" for p in problems]


def index_problems(index: IndexInfo) -> list[str]:
    """Every out-of-range index-wide option (``SCORE``, ``LANGUAGE``)."""
    problems: list[str] = []
    options = index.options
    if options.score is not None:
        problem = INDEX_SCORE.problem("score", options.score)
        if problem is not None:
            problems.append(f"index option {problem}")
    if options.language is not None and options.language.lower() not in LANGUAGES:
        problems.append(
            f"index option language = {options.language!r} is out of range; LANGUAGE takes "
            "one of " + ", ".join(LANGUAGES)
        )
    return problems


def range_problems(schema: IndexSchema) -> list[str]:
    """Every attribute of ``schema`` out of the range the server takes, in field order."""
    problems = index_problems(schema.index)
    for field in schema.fields:
        problems.extend(field_problems(field))
    return problems


def schema_problems(schema: IndexSchema) -> list[str]:
    """``range_problems`` plus the datatype rule of SVS-VAMANA, which the planner leaves
    to its server check (it blocks the plan there with the server's version)."""
    problems = range_problems(schema)
    for field in schema.vector_fields:
        a = field.attrs
        if a.algorithm == "svs-vamana" and a.datatype not in SVS_DATATYPES:
            problems.append(
                f"vector field {field.name!r}: datatype = {a.datatype!r} is out of range; "
                "SVS-VAMANA takes " + " or ".join(SVS_DATATYPES)
            )
    return problems
