"""Re-encoding stored vectors from one datatype to another: the rules, as data.

Pure code, no I/O. Vectors are stored as little-endian raw bytes (numpy
``.tobytes()``) of a known number of dimensions. An :data:`Encoding` says how
the values of one datatype become values of another; plans and reports carry
it so that the stored vectors and the application's query vectors are encoded
by the same rule (see :func:`encode_query`).

The rules:

* float -> float (float16, bfloat16, float32, float64): a plain cast, rounding
  to nearest even (:class:`Cast`).
* float -> int8: one symmetric scale for the whole field and no offset,
  ``q = clip(rint(x * scale), -127, 127)`` (:class:`Int8Symmetric`), the scale
  calibrated as ``127 / quantile(|x|, 0.9999)`` over a sample. With COSINE a
  scale per vector is better, ``127 / max|x_v|`` (:class:`Int8PerVector`);
  cosine ignores it. A per-vector *offset* is never used: it would change every
  distance differently.
* float -> uint8: one offset and one scale for the whole field,
  ``u = clip(rint((x - offset) * scale), 0, 255)`` (:class:`Uint8Affine`),
  offset = quantile 0.0001 and scale = 255 / (quantile 0.9999 - offset). It
  keeps L2 rankings; with COSINE it is a warning and with IP a block (the
  server compares the shifted values), see :func:`uint8_policy`.
* int8 <-> uint8: an exact shift by 128 (:class:`IntShift`; or, when the float
  meaning of the values is known and stays symmetric or affine, the
  :class:`Uint8Affine` / :class:`Int8Symmetric` that describes the result).
* integer -> float: only when the encoding that produced the integers is known,
  ``x = q / scale + offset`` (:class:`Dequantize`); otherwise
  :class:`ReEncodingRefused`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeAlias

import ml_dtypes
import numpy as np
import numpy.typing as npt

from redismigrate.errors import BadInputError
from redismigrate.schema import DATATYPE_BYTES, DISTANCE_METRICS, VECTOR_DATATYPES, Model

Array: TypeAlias = npt.NDArray[Any]

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
}
"""Datatype name -> numpy dtype of its stored bytes (``.itemsize`` = ``DATATYPE_BYTES``)."""

FLOAT_DATATYPES = ("float16", "bfloat16", "float32", "float64")
INT_DATATYPES = ("int8", "uint8")
INT_RANGES: dict[str, tuple[int, int]] = {"int8": (-127, 127), "uint8": (0, 255)}
"""The codes each integer encoding writes (int8 keeps -128 unused: symmetric)."""

# float -> float casts that keep every value exactly.
_EXACT_WIDENINGS = frozenset(
    {
        ("float16", "float32"),
        ("float16", "float64"),
        ("bfloat16", "float32"),
        ("bfloat16", "float64"),
        ("float32", "float64"),
    }
)

INT8_QUANTILE = 0.9999
UINT8_LOW_QUANTILE = 0.0001
UINT8_HIGH_QUANTILE = 0.9999

UINT8_COSINE_WARNING = (
    "uint8 stores (x - offset) × scale with one offset for the whole field, and the server "
    "computes COSINE on those shifted values, so cosine rankings drift from the float ones; "
    "int8 keeps zero at zero and is the better choice for COSINE."
)
UINT8_IP_BLOCKED = (
    "uint8 with IP is blocked: the server computes the inner product on values shifted by one "
    "offset for the whole field, which adds a term per vector (offset × the sum of its "
    "components) and reorders the results; use int8, or force the change to accept this."
)


class ReEncodingRefused(BadInputError, ValueError):
    """A re-encoding that cannot be done faithfully with what is known."""


def _check_datatype(name: str, what: str) -> str:
    if name not in VECTOR_DATATYPES:
        raise ValueError(f"{what} datatype {name!r} is not one of {', '.join(VECTOR_DATATYPES)}")
    return name


def _check_metric(metric: str) -> str:
    normalized = metric.strip().lower()
    if normalized not in DISTANCE_METRICS:
        raise ValueError(f"distance metric {metric!r} is not one of {', '.join(DISTANCE_METRICS)}")
    return normalized


def _check_scale(scale: float, what: str = "scale") -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {scale!r}")


def _is_shift(offset: float, scale: float) -> bool:
    """True when ``offset == -128 / scale``: the affine uint8 codes are int8 codes + 128."""
    return math.isclose(offset * scale, -128.0, rel_tol=1e-9, abs_tol=0.0)


# --------------------------------------------------------------------------- encodings


class _EncodingBase(Model, tag_field="kind", frozen=True, kw_only=True):
    source: str

    def __post_init__(self) -> None:
        _check_datatype(self.source, "source")
        self._check()

    def _check(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class Cast(_EncodingBase, tag="cast", frozen=True, kw_only=True):
    """float -> float, rounding to nearest even (or the identity, source == target)."""

    target: str

    def _check(self) -> None:
        _check_datatype(self.target, "target")
        if self.source != self.target and not (
            self.source in FLOAT_DATATYPES and self.target in FLOAT_DATATYPES
        ):
            raise ValueError(
                f"a cast goes from one float type to another, not {self.source} -> {self.target}"
            )

    @property
    def lossy(self) -> bool:
        return self.source != self.target and (self.source, self.target) not in _EXACT_WIDENINGS


class Int8Symmetric(_EncodingBase, tag="int8_symmetric", frozen=True, kw_only=True):
    """``q = clip(rint(x * scale), -127, 127)``: one scale for the field, no offset.

    From ``uint8`` (codes ``u`` meaning ``u / scale - 128 / scale``) it is the shift
    ``q = clip(u - 128, -127, 127)``.
    """

    scale: float

    def _check(self) -> None:
        _check_scale(self.scale)
        if self.source == "int8":
            raise ValueError("int8_symmetric re-encodes floats or uint8, not int8")

    @property
    def target(self) -> str:
        return "int8"

    @property
    def lossy(self) -> bool:
        return True


class Int8PerVector(_EncodingBase, tag="int8_per_vector", frozen=True, kw_only=True):
    """``q = rint(x * 127 / max|x|)`` for each vector: for COSINE only (it ignores scale)."""

    def _check(self) -> None:
        if self.source not in FLOAT_DATATYPES:
            raise ValueError(f"int8_per_vector re-encodes floats, not {self.source}")

    @property
    def target(self) -> str:
        return "int8"

    @property
    def lossy(self) -> bool:
        return True


class Uint8Affine(_EncodingBase, tag="uint8_affine", frozen=True, kw_only=True):
    """``u = clip(rint((x - offset) * scale), 0, 255)``: one offset and scale for the field.

    From ``int8`` (codes with the same scale and no offset; then ``offset`` is
    ``-128 / scale``) it is the exact shift ``u = q + 128``.
    """

    offset: float
    scale: float

    def _check(self) -> None:
        _check_scale(self.scale)
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be a finite number, got {self.offset!r}")
        if self.source == "uint8":
            raise ValueError("uint8_affine re-encodes floats or int8, not uint8")
        if self.source == "int8" and not _is_shift(self.offset, self.scale):
            raise ValueError(
                "uint8_affine from int8 is a shift by 128: offset must be -128 / scale "
                f"({-128.0 / self.scale!r}), got {self.offset!r}"
            )

    @property
    def target(self) -> str:
        return "uint8"

    @property
    def lossy(self) -> bool:
        return self.source != "int8"


class IntShift(_EncodingBase, tag="int_shift", frozen=True, kw_only=True):
    """int8 <-> uint8 by 128: ``u = q + 128``; ``q = clip(u - 128, -127, 127)``.

    ``scale`` and ``offset``, when known, give the float meaning of the target
    codes, ``x = code / scale + offset``, so that they can be turned back into
    floats later.
    """

    target: str
    scale: float | None = None
    offset: float | None = None

    def _check(self) -> None:
        _check_datatype(self.target, "target")
        if {self.source, self.target} != set(INT_DATATYPES):
            raise ValueError(
                f"int_shift goes between int8 and uint8, not {self.source} -> {self.target}"
            )
        if (self.scale is None) != (self.offset is None):
            raise ValueError("int_shift needs both scale and offset, or neither")
        if self.scale is not None:
            _check_scale(self.scale)
        if self.offset is not None and not math.isfinite(self.offset):
            raise ValueError(f"offset must be a finite number, got {self.offset!r}")

    @property
    def lossy(self) -> bool:
        # uint8 code 0 has no int8 code in -127..127.
        return self.source == "uint8"


class Dequantize(_EncodingBase, tag="dequantize", frozen=True, kw_only=True):
    """int -> float: ``x = q / scale + offset``, then rounded to the target type."""

    target: str
    scale: float
    offset: float = 0.0

    def _check(self) -> None:
        _check_datatype(self.target, "target")
        if self.source not in INT_DATATYPES or self.target not in FLOAT_DATATYPES:
            raise ValueError(
                f"dequantize goes from int8/uint8 to a float type, not {self.source} -> "
                f"{self.target}"
            )
        _check_scale(self.scale)
        if not math.isfinite(self.offset):
            raise ValueError(f"offset must be a finite number, got {self.offset!r}")

    @property
    def lossy(self) -> bool:
        # float32/float64 hold q / scale + offset closely enough to give q back.
        return self.target in ("float16", "bfloat16")


Encoding: TypeAlias = Cast | Int8Symmetric | Int8PerVector | Uint8Affine | IntShift | Dequantize
ENCODING_KINDS: dict[str, type[Encoding]] = {
    "cast": Cast,
    "int8_symmetric": Int8Symmetric,
    "int8_per_vector": Int8PerVector,
    "uint8_affine": Uint8Affine,
    "int_shift": IntShift,
    "dequantize": Dequantize,
}


def code_meaning(encoding: Encoding) -> tuple[float, float] | None:
    """``(scale, offset)`` with ``x = code / scale + offset`` for the integer codes an
    encoding writes; None when it writes floats or the meaning is not one affine map."""
    if isinstance(encoding, Int8Symmetric):
        return encoding.scale, 0.0
    if isinstance(encoding, Uint8Affine):
        return encoding.scale, encoding.offset
    if isinstance(encoding, IntShift) and encoding.scale is not None:
        return encoding.scale, encoding.offset or 0.0
    return None


def inverse_encoding(encoding: Encoding) -> Encoding | None:
    """The encoding that takes ``encoding``'s output back to its source type (as close
    as the target keeps it); None where there is none (a scale per vector, say)."""
    if isinstance(encoding, Cast):
        return Cast(source=encoding.target, target=encoding.source)
    if encoding.source in FLOAT_DATATYPES and isinstance(encoding, (Int8Symmetric, Uint8Affine)):
        meaning = code_meaning(encoding)
        assert meaning is not None
        scale, offset = meaning
        return Dequantize(
            source=encoding.target, target=encoding.source, scale=scale, offset=offset
        )
    return None


# --------------------------------------------------------------------------- policy


def uint8_policy(metric: str) -> Literal["ok", "warn", "blocked"]:
    """Whether float -> uint8 (one global offset) is fit for a distance metric."""
    normalized = _check_metric(metric)
    if normalized == "l2":
        return "ok"
    if normalized == "cosine":
        return "warn"
    return "blocked"


def uint8_policy_message(metric: str) -> str | None:
    """The sentence to show for :func:`uint8_policy`'s answer (None when ``"ok"``)."""
    policy = uint8_policy(metric)
    if policy == "warn":
        return UINT8_COSINE_WARNING
    if policy == "blocked":
        return UINT8_IP_BLOCKED
    return None


# --------------------------------------------------------------------------- calibration


def _sample_as_float64(sample: Array | None) -> Array:
    if sample is None:
        raise ValueError("calibration needs a sample of the stored vectors, got none")
    values = np.asarray(sample)
    if values.ndim != 2:
        raise ValueError(
            f"the calibration sample must be 2-D (vectors × dims), got shape {values.shape}"
        )
    if values.size == 0:
        raise ValueError(
            f"the calibration sample is empty (shape {values.shape}); sample some stored vectors"
        )
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the calibration sample contains NaN or infinite values")
    return values


def calibrate(
    source: str,
    target: str,
    metric: str,
    sample: Array | None,
    *,
    previous: Encoding | None = None,
    per_vector_cosine: bool = True,
) -> Encoding:
    """The encoding that re-encodes a field's ``source`` values as ``target``.

    ``sample``: stored vectors decoded to float, shape (n, dims); needed for
    float -> int8/uint8, ignored otherwise. ``previous``: the encoding that
    produced the current integer values, when known; needed for int -> float
    and used for int8 <-> uint8 to keep the values' float meaning.
    """
    source = _check_datatype(source.strip().lower(), "source")
    target = _check_datatype(target.strip().lower(), "target")
    metric = _check_metric(metric)
    if previous is not None and previous.target != source:
        raise ValueError(
            f"the previous encoding writes {previous.target}, but the field now holds {source}"
        )
    if source == target:
        return Cast(source=source, target=target)
    if source in FLOAT_DATATYPES:
        if target in FLOAT_DATATYPES:
            return Cast(source=source, target=target)
        values = _sample_as_float64(sample)
        if target == "int8":
            if metric == "cosine" and per_vector_cosine:
                return Int8PerVector(source=source)
            high = float(np.quantile(np.abs(values), INT8_QUANTILE))
            if not high > 0:
                raise ValueError(
                    "cannot calibrate an int8 scale: the sampled vectors are all zero "
                    f"(the {INT8_QUANTILE} quantile of |x| is 0)"
                )
            return Int8Symmetric(source=source, scale=127.0 / high)
        low, high = (
            float(q) for q in np.quantile(values, [UINT8_LOW_QUANTILE, UINT8_HIGH_QUANTILE])
        )
        if not high > low:
            raise ValueError(
                "cannot calibrate a uint8 scale: the sampled components are all equal "
                f"({low!r}), so there is no range to spread over 0..255"
            )
        return Uint8Affine(source=source, offset=low, scale=255.0 / (high - low))
    # integer source
    meaning = code_meaning(previous) if previous is not None else None
    if target in INT_DATATYPES:
        if meaning is None:
            return IntShift(source=source, target=target)
        scale, offset = meaning
        if source == "int8":  # -> uint8: u = q + 128 means x = u / scale + offset - 128 / scale
            if offset == 0.0:
                return Uint8Affine(source=source, offset=-128.0 / scale, scale=scale)
            return IntShift(source=source, target=target, scale=scale, offset=offset - 128 / scale)
        # uint8 -> int8: q = u - 128 means x = q / scale + offset + 128 / scale
        if _is_shift(offset, scale):
            return Int8Symmetric(source=source, scale=scale)
        return IntShift(source=source, target=target, scale=scale, offset=offset + 128 / scale)
    # integer -> float
    if meaning is not None:
        scale, offset = meaning
        return Dequantize(source=source, target=target, scale=scale, offset=offset)
    if isinstance(previous, Int8PerVector):
        if metric == "cosine":
            # Each vector had its own scale; cosine ignores it, so any one scale keeps
            # the directions. 127 puts every vector's largest component at ±1.
            return Dequantize(source=source, target=target, scale=127.0)
        raise ReEncodingRefused(
            f"{source} -> {target} refused: the {source} values were quantized with a scale "
            f"per vector, which only COSINE can ignore, and this field uses {metric.upper()}"
        )
    raise ReEncodingRefused(
        f"{source} -> {target} refused: the scale of the stored {source} values is unknown, "
        "so they cannot be turned back into floats; plan with the earlier plan or report "
        "that quantized this field (it holds the scale)"
    )


# --------------------------------------------------------------------------- encoding


def decode_stored(raw: bytes | bytearray | memoryview | Array, datatype: str, dims: int) -> Array:
    """Stored bytes -> array of ``datatype``: shape (dims,) for one vector's bytes,
    (n, dims) for n vectors' bytes joined. No copy (read-only for ``bytes``)."""
    dtype = NUMPY_DTYPES[_check_datatype(datatype, "stored")]
    if dims <= 0:
        raise ValueError(f"dims must be > 0, got {dims}")
    buffer = (
        np.ascontiguousarray(raw).reshape(-1).view(np.uint8).data
        if isinstance(raw, np.ndarray)
        else memoryview(raw)
    )
    size = buffer.nbytes
    expected = dims * DATATYPE_BYTES[datatype]
    if size == 0 or size % expected:
        raise ValueError(
            f"a vector of {dims} {datatype} values is {expected} bytes, got {size} bytes "
            f"(expected {expected} or a multiple of it)"
        )
    values = np.frombuffer(buffer, dtype=dtype)
    return values if size == expected else values.reshape(-1, dims)


def _as_source(vectors: Array | Sequence[float], source: str) -> Array:
    """Values taken as the field's source type, rounded as the server would store them."""
    values = np.asarray(vectors)
    dtype = NUMPY_DTYPES[source]
    if values.dtype == dtype:
        return values
    if source in FLOAT_DATATYPES:
        return _cast(values, source)
    low, high = (-128, 127) if source == "int8" else (0, 255)
    as_float = values.astype(np.float64)
    if not (
        np.isfinite(as_float).all()
        and (np.rint(as_float) == as_float).all()
        and ((as_float >= low) & (as_float <= high)).all()
    ):
        raise ValueError(f"the values are not {source} codes (whole numbers {low}..{high})")
    return as_float.astype(dtype)


def _float64_to_bfloat16(values: Array) -> Array:
    """float64 -> bfloat16 rounded once to nearest even.

    Casting float64 -> bfloat16 with ml_dtypes goes through float32 and so
    rounds twice (1 + 2**-8 + 2**-40 becomes 1.0, not 1.0078125). Rounding to
    float32 *to odd* first, then to bfloat16 to nearest even, is exact.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = values.astype(np.float32)
        inexact = (nearest.astype(np.float64) != values) & ~np.isnan(values)
        even = (nearest.view(np.uint32) & 1) == 0
        # The two float32 neighbours of an inexact value differ by one unit in the last
        # place, one odd and one even; round to odd takes the odd one.
        towards = np.where(values > nearest, np.float32(np.inf), np.float32(-np.inf))
        odd = np.where(inexact & even, np.nextafter(nearest, towards), nearest)
        result: Array = odd.astype(ml_dtypes.bfloat16)
    return result


def _cast(values: Array, target: str) -> Array:
    if target == "bfloat16" and values.dtype == np.float64:
        return _float64_to_bfloat16(values)
    return values.astype(NUMPY_DTYPES[target])


def _require_finite(values: Array) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        where = np.argwhere(~finite)[0]
        raise ValueError(
            "cannot quantize NaN or infinite components (first at index "
            f"{tuple(int(i) for i in where)})"
        )


def encode_batch(vectors: Array, encoding: Encoding) -> Array:
    """(n, dims) values of the encoding's source type -> (n, dims) of its target type.

    A 1-D vector gives a 1-D result. Inputs of another dtype are first taken as
    the source type (floats rounded to it; integers must be whole codes in range).
    """
    values = _as_source(vectors, encoding.source)
    if values.ndim not in (1, 2):
        raise ValueError(f"expected vectors of shape (n, dims) or (dims,), got {values.shape}")
    target_dtype = NUMPY_DTYPES[encoding.target]
    if isinstance(encoding, Cast):
        same = encoding.source == encoding.target
        return values.copy() if same else _cast(values, encoding.target)
    if encoding.source in INT_DATATYPES:
        codes = values.astype(np.int16)
        if isinstance(encoding, Dequantize):
            dequantized = codes.astype(np.float64) / encoding.scale + encoding.offset
            return _cast(dequantized, encoding.target)
        # Int8Symmetric from uint8, Uint8Affine from int8, IntShift: a shift by 128.
        shifted = codes + 128 if encoding.source == "int8" else codes - 128
        low, high = INT_RANGES[encoding.target]
        return np.clip(shifted, low, high).astype(target_dtype)
    x = values.astype(np.float64)
    _require_finite(x)
    if isinstance(encoding, Int8Symmetric):
        scaled = x * encoding.scale
    elif isinstance(encoding, Int8PerVector):
        peak = np.max(np.abs(x), axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape)
        with np.errstate(divide="ignore"):
            factor = np.where(peak > 0, 127.0 / peak, 0.0)
        scaled = x * factor
    elif isinstance(encoding, Uint8Affine):
        scaled = (x - encoding.offset) * encoding.scale
    else:  # pragma: no cover - __post_init__ rules out the rest for float sources
        raise ValueError(f"{type(encoding).__name__} cannot encode {encoding.source} values")
    low, high = INT_RANGES[encoding.target]
    return np.clip(np.rint(scaled), low, high).astype(target_dtype)


def reencode_bytes(blobs: Sequence[bytes], encoding: Encoding, dims: int) -> list[bytes]:
    """Stored blobs of the source type -> stored blobs of the target type, in one pass."""
    if not blobs:
        return []
    expected = dims * DATATYPE_BYTES[encoding.source]
    for position, blob in enumerate(blobs):
        if len(blob) != expected:
            raise ValueError(
                f"blob {position} is {len(blob)} bytes; a vector of {dims} {encoding.source} "
                f"values is {expected} bytes"
            )
    vectors = decode_stored(b"".join(blobs), encoding.source, dims).reshape(len(blobs), dims)
    joined = encode_batch(vectors, encoding).tobytes()
    size = dims * DATATYPE_BYTES[encoding.target]
    return [joined[i : i + size] for i in range(0, len(joined), size)]


def _vector_changes(plan_or_report: Any) -> list[Any]:
    changes = getattr(plan_or_report, "vector_changes", None)
    if changes is None:
        raise TypeError(
            f"{type(plan_or_report).__name__} has no vector_changes; pass the plan or report "
            "that re-encodes the field"
        )
    return [c for c in changes if getattr(c, "encoding", None) is not None]


def encoding_for(plan_or_report: Any, field: str | None = None) -> Encoding:
    """The encoding a plan or report applies to ``field`` (or its only re-encoded field)."""
    changes = _vector_changes(plan_or_report)
    names = ", ".join(repr(c.field) for c in changes) or "none"
    if field is None:
        if len(changes) != 1:
            raise ValueError(
                f"the plan re-encodes {len(changes)} vector fields ({names}); name one with field="
            )
        encoding: Encoding = changes[0].encoding
        return encoding
    for change in changes:
        if change.field == field:
            found: Encoding = change.encoding
            return found
    raise ValueError(f"the plan does not re-encode field {field!r} (it re-encodes: {names})")


def encode_query(
    vector: Sequence[float] | Array, plan_or_report: Any, field: str | None = None
) -> bytes:
    """The bytes to pass as the query vector PARAM after a re-encoding.

    ``vector`` is given as the field held it before (floats for a float source;
    the integer codes for an integer source) and is encoded exactly as the
    stored vectors were. With :class:`Int8PerVector` the query gets its own
    scale, which cosine ignores.
    """
    encoding = encoding_for(plan_or_report, field)
    values = np.asarray(vector)
    if values.ndim != 1:
        raise ValueError(f"a query vector is 1-D, got shape {values.shape}")
    encoded: Array = encode_batch(values, encoding)
    return encoded.tobytes()


# --------------------------------------------------------------------------- forecast

_QUERY_CHUNK = 64
_ROW_CHUNK = 32_768


def _distances(queries: Array, rows: Array, metric: str) -> Array:
    dots = queries @ rows.T
    if metric == "ip":
        result: Array = 1.0 - dots
        return result
    if metric == "l2":
        q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
        r2 = np.einsum("ij,ij->i", rows, rows)[None, :]
        result = q2 + r2 - 2.0 * dots
        return result
    qn = np.sqrt(np.einsum("ij,ij->i", queries, queries))[:, None]
    rn = np.sqrt(np.einsum("ij,ij->i", rows, rows))[None, :]
    result = 1.0 - dots / (np.where(qn > 0, qn, 1.0) * np.where(rn > 0, rn, 1.0))
    return result


def _row_chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, _ROW_CHUNK):
        yield start, min(n, start + _ROW_CHUNK)


def _top_k(
    queries: Array,
    query_rows: Array,
    rows: Callable[[int, int], Array],
    n: int,
    metric: str,
    k: int,
) -> Array:
    """Indices of the k nearest rows per query, the query's own row left out.

    ``rows(start, stop)`` gives rows start..stop as float64; the distance matrix
    is built per chunk of rows and merged, so memory stays bounded.
    """
    best_d = np.full((len(queries), 0), np.inf)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, stop in _row_chunks(n):
        d = _distances(queries, rows(start, stop), metric)
        own = (query_rows >= start) & (query_rows < stop)
        d[np.nonzero(own)[0], query_rows[own] - start] = np.inf
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, stop), (len(queries), stop - start))],
            axis=1,
        )
        keep = np.argpartition(d, k - 1, axis=1)[:, :k] if d.shape[1] > k else np.argsort(d)
        best_d = np.take_along_axis(d, keep, axis=1)
        best_i = np.take_along_axis(i, keep, axis=1)
    return best_i


def stored_as_float64(encoded: Array, encoding: Encoding) -> Array:
    """Encoded values as float64 by the encoding's inverse (``code / scale + offset``;
    floats as they are; :class:`Int8PerVector` codes as they are, as cosine ignores scale)."""
    values = np.asarray(encoded).astype(np.float64)
    meaning = code_meaning(encoding)
    if meaning is None:
        return values
    scale, offset = meaning
    result: Array = values / scale + offset
    return result


def recall_at_k(
    original: Array,
    encoded: Array,
    metric: str,
    encoding: Encoding,
    *,
    k: int = 10,
    queries: int = 100,
    seed: int = 0,
    compare: Literal["stored", "decoded"] = "stored",
) -> float:
    """Forecast of search quality after a re-encoding: mean |top-k ∩ true top-k| / k.

    Ground truth: exact KNN in float64 over ``original`` (n, dims), the vectors
    in the source representation. The same queries (a seeded random subset of
    its rows, each left out of its own results) are encoded as
    :func:`encode_query` would and searched over ``encoded`` (n, dims), the
    output of :func:`encode_batch`.

    ``compare="stored"`` (default) compares the stored codes as the server does;
    ``"decoded"`` first maps them back by the encoding's inverse. The two rank
    alike except for an offset under COSINE or IP (uint8), where only "stored"
    shows what the server will return.

    Metrics: "cosine" (1 - cos), "l2" (squared distance), "ip" (1 - dot).
    """
    metric = _check_metric(metric)
    original = np.asarray(original)
    encoded = np.asarray(encoded)
    if original.ndim != 2 or original.shape != encoded.shape:
        raise ValueError(
            f"original and encoded must be (n, dims) of one shape, got {original.shape} and "
            f"{encoded.shape}"
        )
    n = original.shape[0]
    if n < 2:
        raise ValueError(f"recall needs at least 2 vectors, got {n}")
    if k < 1 or queries < 1:
        raise ValueError(f"k and queries must be >= 1, got k={k}, queries={queries}")
    if compare not in ("stored", "decoded"):
        raise ValueError(f"compare must be 'stored' or 'decoded', got {compare!r}")
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=min(queries, n), replace=False))

    def to_float(codes: Array) -> Array:
        if compare == "decoded":
            return stored_as_float64(codes, encoding)
        return np.asarray(codes).astype(np.float64)

    hits = 0
    for first in range(0, len(picked), _QUERY_CHUNK):
        rows_q = picked[first : first + _QUERY_CHUNK]
        true_q = original[rows_q].astype(np.float64)
        truth = _top_k(true_q, rows_q, lambda a, b: original[a:b].astype(np.float64), n, metric, k)
        enc_q = to_float(encode_batch(original[rows_q], encoding))
        found = _top_k(enc_q, rows_q, lambda a, b: to_float(encoded[a:b]), n, metric, k)
        for want, got in zip(truth, found, strict=True):
            hits += len(np.intersect1d(want, got, assume_unique=True))
    return hits / (len(picked) * k)


__all__ = [
    "ENCODING_KINDS",
    "FLOAT_DATATYPES",
    "INT_DATATYPES",
    "NUMPY_DTYPES",
    "UINT8_COSINE_WARNING",
    "UINT8_IP_BLOCKED",
    "Cast",
    "Dequantize",
    "Encoding",
    "Int8PerVector",
    "Int8Symmetric",
    "IntShift",
    "ReEncodingRefused",
    "Uint8Affine",
    "calibrate",
    "code_meaning",
    "decode_stored",
    "encode_batch",
    "encode_query",
    "encoding_for",
    "inverse_encoding",
    "recall_at_k",
    "reencode_bytes",
    "stored_as_float64",
    "uint8_policy",
    "uint8_policy_message",
]
