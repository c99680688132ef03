"""What a migration does to the server's memory and how much disk its backup takes.

Pure code: one model, used by the plan's warnings, the estimate, the preflight and
the report, so that they all give the same figure.

What the server's ``used_memory`` counts is what the allocator hands out, and the
allocator (jemalloc, Redis's default) rounds every request up to a size class: four
classes per doubling above 128 bytes (160, 192, 224, 256, 320, ...). A float32 vector
of 128 dims is a 512-byte hash value, stored as an sds string of 518 bytes, which
takes a 640-byte class; its float16 cast (262 bytes) takes 320. The model counts the
classes, not the payload: that is most of the difference between "dims x width" and
what the server frees.

The parts:

* Documents (hash storage only; JSON arrays are not rewritten). A hash keeps its fields
  in one listpack while every value is at most ``hash-max-listpack-value`` (64) bytes
  and there are at most ``hash-max-listpack-entries`` (512) fields; otherwise in a hash
  table whose values are sds strings (header 1, 3, 5 or 9 bytes, plus a NUL), each its
  own allocation. A hash never goes back from a table to a listpack.
* The vector index, per the layout of RediSearch's VectorSimilarity library: vectors in
  blocks of ``BLOCK_SIZE`` (1024 by default; HNSW always 1024) allocated as one piece
  each, with an 8-byte allocation header and up to 64 bytes of alignment; a label
  table per vector; for HNSW the graph, in blocks of records of
  ``sizeof(ElementGraphData) + 4 * 2M`` bytes (level 0), an incoming-edge list per
  element and level, and the upper levels (an element reaches level ``l`` with
  probability ``M ** -l``, each level ``16 + 4M`` bytes). The graph does not depend on
  the datatype, so a datatype change only changes the vector blocks.
* The backup on disk: frames of ``batch_size`` documents, each a 16-byte prefix and a
  msgpack map of the keys and the original vector bytes.

Checked against Redis Stack 7.4 (search 2.10, jemalloc 5.3): see
``benchmarks/memory_model.py`` and ``benchmarks/results/memory_model.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from redismigrate.schema import DATATYPE_BYTES, IndexSchema, Model, VectorAttrs, VectorField

if TYPE_CHECKING:
    from redismigrate.ftinfo import IndexStats
    from redismigrate.plan import MigrationPlan, RenameOperations, VectorChange

MIB = 1_048_576

# Redis's defaults (CONFIG GET hash-max-listpack-*)
HASH_MAX_LISTPACK_VALUE = 64
HASH_MAX_LISTPACK_ENTRIES = 512

# VectorSimilarity (RediSearch's vector library)
VECSIM_BLOCK_SIZE = 1024  # DEFAULT_BLOCK_SIZE: FLAT's default, HNSW's always
VECSIM_ALLOCATION_HEADER = 8  # every allocation carries its size in front
VECSIM_BLOCK_ALIGNMENT = 64  # vector blocks are allocated with room to align them
HNSW_DEFAULT_M = 16
# sizeof(ElementGraphData): toplevel 8, std::mutex 40, others 8, level-0 LevelData 16
HNSW_ELEMENT_GRAPH_HEADER = 72
HNSW_LEVEL_DATA_HEADER = 16  # sizeof(LevelData): the incoming-edge pointer and numLinks
# an incoming-edge list object (vecsim_stl::vector) per element and level, and what its
# buffer holds on average (measured on search 2.10 builds: ~40 bytes per element)
HNSW_INCOMING_LIST_BYTES = 80
HNSW_INCOMING_EDGES_BYTES = 40
HNSW_METADATA_BYTES = 9  # ElementMetaData: label 8 + flags 1 (packed)
VISITED_TAG_BYTES = 2  # the visited-nodes list of a search: one tag per element
LABEL_LOOKUP_BYTES = 32 + 8  # unordered_map<label, id>: a node (24 + header) and a bucket
LABEL_BYTES = 8  # FLAT: id -> label table

# The backup's data file (redismigrate.backup): frame prefix and msgpack framing
BACKUP_FRAME_PREFIX = 16
BACKUP_HEADER_FILE_BYTES = 1200  # the header JSON beside the data
DEFAULT_BATCH_SIZE = 500
# memory a run may use: at most this share of the free memory (the preflight's margin)
ROOM_MARGIN = 0.8


# ---------------------------------------------------------------------------- allocator


def size_class(n: int) -> int:
    """The jemalloc size class a request of ``n`` bytes gets (what ``used_memory`` counts):
    8, multiples of 16 up to 128, then four classes per doubling."""
    if n <= 0:
        return 0
    if n <= 8:
        return 8
    if n <= 128:
        return (n + 15) // 16 * 16
    delta = 1 << ((n - 1).bit_length() - 3)
    return (n + delta - 1) // delta * delta


def sds_bytes(length: int) -> int:
    """Allocation of an sds string of ``length`` bytes: header, the bytes, a NUL."""
    if length < 32:
        header = 1
    elif length < 1 << 8:
        header = 3
    elif length < 1 << 16:
        header = 5
    else:
        header = 9
    return size_class(header + length + 1)


def listpack_entry_bytes(length: int) -> int:
    """Bytes a string of ``length`` bytes takes inside a listpack (encoding, data, backlen)."""
    encoding = 1 if length < 64 else 2 if length < 4096 else 5
    entry = encoding + length
    backlen = 1 if entry < 128 else 2 if entry < 16384 else 3
    return entry + backlen


# a hash converted from a listpack to a table: per field a table entry and an sds field
# name (the values are counted apart), the dict and its buckets
_HASHTABLE_FIELD_BYTES = 32 + 32 + 8
_HASHTABLE_BYTES = 64


def hash_value_bytes(
    before: int, after: int, *, fields: int = 2, listpack_value: int = HASH_MAX_LISTPACK_VALUE
) -> tuple[int, int]:
    """Memory of one hash value of ``before`` bytes, and after it is rewritten with
    ``after`` bytes: a listpack entry while the hash is a listpack, else its own sds.

    A hash whose new value no longer fits a listpack is converted to a table (counted
    roughly, for ``fields`` fields); a table never becomes a listpack again.
    """
    if before > listpack_value:
        return sds_bytes(before), sds_bytes(after)
    if after <= listpack_value:
        return listpack_entry_bytes(before), listpack_entry_bytes(after)
    converted = _HASHTABLE_BYTES + fields * _HASHTABLE_FIELD_BYTES + sds_bytes(after)
    return listpack_entry_bytes(before), converted


def added_field_bytes(
    name: int, value: int, *, table: bool, listpack_value: int = HASH_MAX_LISTPACK_VALUE
) -> int:
    """Memory a new field (``name`` and ``value`` bytes long) adds to a hash: in a table
    an entry (24 bytes, a 32-byte class) and two sds strings; in a listpack two entries."""
    if table or value > listpack_value:
        return size_class(24) + sds_bytes(name) + sds_bytes(value)
    return listpack_entry_bytes(name) + listpack_entry_bytes(value)


# ---------------------------------------------------------------------------- vector index


class VectorIndexBytes(Model, frozen=True, kw_only=True):
    """Memory of one vector field's index, as the allocator counts it."""

    vectors: int  # the blocks of stored vectors
    graph: int = 0  # HNSW / SVS links
    metadata: int = 0  # label tables and lookups

    @property
    def total(self) -> int:
        return self.vectors + self.graph + self.metadata


def stored_vector_bytes(attrs: VectorAttrs) -> int:
    """Bytes the index stores per vector: dims x width (int8/uint8 with COSINE also keep
    the vector's norm, a float32, on search 8.0+)."""
    extra = 4 if attrs.datatype in ("int8", "uint8") and attrs.distance_metric == "cosine" else 0
    return attrs.dims * DATATYPE_BYTES[attrs.datatype] + extra


def _blocks(count: int, block_size: int) -> int:
    return math.ceil(count / block_size) if count > 0 else 0


def _block_bytes(block_size: int, record: int, aligned: bool) -> int:
    extra = VECSIM_ALLOCATION_HEADER + (VECSIM_BLOCK_ALIGNMENT if aligned else 0)
    return size_class(block_size * record + extra)


def _table_bytes(count: int, block_size: int, record: int) -> int:
    """A table grown a block at a time: ``record`` bytes for each slot."""
    slots = _blocks(count, block_size) * block_size
    return size_class(slots * record + VECSIM_ALLOCATION_HEADER) if slots else 0


def _hnsw_upper_levels(m: int) -> float:
    """Expected bytes per element for its levels above 0 (reached with probability M^-l)."""
    level_bytes = HNSW_LEVEL_DATA_HEADER + 4 * m
    total = 0.0
    for level in range(1, 12):
        p_exact = m**-level * (1 - 1 / m)
        cost = size_class(level * level_bytes + VECSIM_ALLOCATION_HEADER)
        total += p_exact * (cost + level * HNSW_INCOMING_LIST_BYTES)
    return total


def vector_index_bytes(attrs: VectorAttrs, count: int) -> VectorIndexBytes:
    """Memory of a vector index of ``count`` vectors with ``attrs``."""
    if count <= 0:
        return VectorIndexBytes(vectors=0)
    per_vector = stored_vector_bytes(attrs)
    if attrs.algorithm == "flat":
        block = attrs.block_size or VECSIM_BLOCK_SIZE
        return VectorIndexBytes(
            vectors=_blocks(count, block) * _block_bytes(block, per_vector, aligned=True),
            metadata=_table_bytes(count, block, LABEL_BYTES) + count * LABEL_LOOKUP_BYTES,
        )
    block = VECSIM_BLOCK_SIZE
    vectors = _blocks(count, block) * _block_bytes(block, per_vector, aligned=True)
    if attrs.algorithm == "hnsw":
        m = attrs.m or HNSW_DEFAULT_M
        record = HNSW_ELEMENT_GRAPH_HEADER + 4 * 2 * m
        graph = _blocks(count, block) * _block_bytes(block, record, aligned=False)
        per_element = HNSW_INCOMING_LIST_BYTES + HNSW_INCOMING_EDGES_BYTES + _hnsw_upper_levels(m)
        graph += int(count * per_element)
        metadata = _table_bytes(count, block, HNSW_METADATA_BYTES) + count * (
            LABEL_LOOKUP_BYTES + VISITED_TAG_BYTES
        )
        return VectorIndexBytes(vectors=vectors, graph=graph, metadata=metadata)
    # SVS-VAMANA (search 8.2+), roughly: the vectors (compressed ones are smaller, not
    # counted here) and a fixed-degree graph of 4-byte ids
    degree = attrs.graph_max_degree or 32
    return VectorIndexBytes(
        vectors=vectors, graph=count * 4 * degree, metadata=count * LABEL_LOOKUP_BYTES
    )


# ---------------------------------------------------------------------------- backup


def _bin_header(length: int) -> int:
    return 2 if length < 1 << 8 else 3 if length < 1 << 16 else 5


def backup_value_bytes(length: int) -> int:
    """Bytes one value of ``length`` bytes takes in the backup (msgpack bin)."""
    return _bin_header(length) + length


def _str_header(length: int) -> int:
    return 1 if length < 32 else 2 if length < 1 << 8 else 3 if length < 1 << 16 else 5


def _array_header(length: int) -> int:
    return 1 if length < 16 else 3 if length < 1 << 16 else 5


def _int_bytes(value: int) -> int:
    return 1 if value < 128 else 2 if value < 1 << 8 else 3 if value < 1 << 16 else 5


def backup_disk_bytes(
    documents: int,
    value_bytes: Sequence[tuple[str, int]],
    *,
    average_key_bytes: float = 16,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Size of the backup of ``documents`` documents: for each backed-up field its name
    and the original value's bytes. Frames of ``batch_size`` keys, plus the header file."""
    if documents <= 0 or not value_bytes:
        return 0
    frames = math.ceil(documents / batch_size)
    key = round(average_key_bytes)
    per_document = backup_value_bytes(key) + sum(backup_value_bytes(n) for _, n in value_bytes)
    per_frame = (
        BACKUP_FRAME_PREFIX
        + 1  # the map of 3 keys
        + 6
        + _int_bytes(frames)  # "batch": n
        + 5
        + _array_header(batch_size)  # "keys": [...]
        + 8
        + 1  # "vectors": {...}
        + sum(
            _str_header(len(name)) + len(name) + _array_header(batch_size)
            for name, _ in value_bytes
        )
    )
    return documents * per_document + frames * per_frame + BACKUP_HEADER_FILE_BYTES


# ---------------------------------------------------------------------------- the model


class FieldMemory(Model, frozen=True, kw_only=True):
    """One vector field: its values in the documents and its index, before and after."""

    field: str
    source_field: str
    documents_before: int = 0  # every document's value of the field (hash storage)
    documents_after: int = 0
    index_before: int = 0
    index_after: int = 0
    rewrite_documents: bool = False

    @property
    def change(self) -> int:
        return self.documents_after - self.documents_before + self.index_after - self.index_before


class MemoryModel(Model, frozen=True, kw_only=True):
    """What a migration does to the server's memory (bytes, as ``used_memory`` counts
    them) and the disk its backup needs."""

    documents: int
    fields: list[FieldMemory] = []
    other_change: int = 0  # renamed keys and hash fields
    change: int = 0  # used_memory after the run minus before (negative: frees)
    peak_growth: int = 0  # the most used_memory grows during the run (online: the shadow)
    shadow_documents: int = 0  # of that, shadow vectors in the documents (online re-encoding)
    backup_disk: int = 0

    @property
    def documents_change(self) -> int:
        return sum(f.documents_after - f.documents_before for f in self.fields)

    @property
    def index_change(self) -> int:
        return sum(f.index_after - f.index_before for f in self.fields)


class MemoryRoom(Model, frozen=True, kw_only=True):
    """The server's memory when a plan is made (INFO memory): ``used_memory``,
    ``maxmemory`` (0: no limit) and ``total_system_memory`` (0: not reported)."""

    used: int
    maxmemory: int = 0
    system: int = 0

    def fits(self, growth: int, margin: float = ROOM_MARGIN) -> tuple[bool, str]:
        """Whether ``growth`` more bytes fit in ``margin`` of the free memory: under
        maxmemory where one is set, else under the machine's memory; and why, in words."""
        if self.maxmemory > 0:
            limit, what = self.maxmemory, "maxmemory"
        elif self.system > 0:
            limit, what = self.system, "the machine's memory (no maxmemory)"
        else:
            return True, "the server sets no maxmemory and does not report its machine's memory"
        free = max(limit - self.used, 0)
        text = f"{mb(free)} free under {what}, at most {int(margin * 100)}% of it used"
        return growth <= int(free * margin), text


def average_key_bytes(keys: Iterable[str], default: int = 16) -> int:
    sample = [len(k.encode("utf-8", "surrogateescape")) for k in keys]
    return sum(sample) // len(sample) if sample else default


def _source_name(
    target: VectorField, renames: RenameOperations | None, changes: Sequence[VectorChange]
) -> str:
    for change in changes:
        if change.field == target.name:
            return change.source_field
    for rename in renames.rename_fields if renames is not None else ():
        if rename.new_name == target.name:
            return rename.old_name
    return target.name


def model_memory(
    *,
    source: IndexSchema,
    target: IndexSchema,
    stats: IndexStats,
    vector_changes: Sequence[VectorChange] = (),
    renames: RenameOperations | None = None,
    online: bool = False,
    key_sample: Iterable[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    listpack_value: int = HASH_MAX_LISTPACK_VALUE,
    shadow_fields: Mapping[str, str] | None = None,
    finish: bool = False,
) -> MemoryModel:
    """The memory change and backup size of migrating ``source`` to ``target``.

    ``shadow_fields`` maps a re-encoded field to the hash field an online run writes
    its new vectors into (``redismigrate.shadow``): at the peak the documents hold the
    original value and the new one. Without ``finish`` (the keep_shadow_field variant)
    they keep both to the end and nothing is backed up; with it the originals are
    rewritten in place (backed up first) and the shadows removed: the end is that of a
    drop_recreate run.
    """
    docs = stats.num_docs + stats.hash_indexing_failures
    key_bytes = average_key_bytes(key_sample)
    by_target = {vc.field: vc for vc in vector_changes}
    fields: list[FieldMemory] = []
    backed_up: list[tuple[str, int]] = []
    shadow_documents = 0
    for field in target.vector_fields:
        source_name = _source_name(field, renames, vector_changes)
        before_field = source.field(source_name)
        if not isinstance(before_field, VectorField):
            continue
        before_attrs, after_attrs = before_field.attrs, field.attrs
        index_before = vector_index_bytes(before_attrs, docs).total
        index_after = vector_index_bytes(after_attrs, docs).total
        change = by_target.get(field.name)
        doc_before = doc_after = 0
        rewrite = bool(change is not None and change.rewrite_documents)
        shadow = (shadow_fields or {}).get(field.name)
        if rewrite and shadow is not None:
            grown = added_field_bytes(
                len(shadow.encode()),
                after_attrs.bytes_per_vector,
                table=before_attrs.bytes_per_vector > listpack_value,
                listpack_value=listpack_value,
            )
            shadow_documents += docs * grown
            doc_before, doc_after = 0, docs * grown
        if rewrite and (shadow is None or finish):
            one_before, one_after = hash_value_bytes(
                before_attrs.bytes_per_vector,
                after_attrs.bytes_per_vector,
                fields=len(source.fields),
                listpack_value=listpack_value,
            )
            doc_before, doc_after = docs * one_before, docs * one_after
            backed_up.append((source_name, before_attrs.bytes_per_vector))
        if change is None and index_before == index_after:
            continue
        fields.append(
            FieldMemory(
                field=field.name,
                source_field=source_name,
                documents_before=doc_before,
                documents_after=doc_after,
                index_before=index_before,
                index_after=index_after,
                rewrite_documents=rewrite,
            )
        )
    other = 0
    if renames is not None and source.storage_type == "hash":
        # names are stored once per document (and keys once more in the index's doc
        # table); a size class per name averages out to the change in length
        for rename in renames.rename_fields:
            other += docs * (len(rename.new_path.encode()) - len(rename.old_path.encode()))
        if renames.change_prefix is not None:
            grow = len(renames.change_prefix.new.encode()) - len(renames.change_prefix.old.encode())
            other += 2 * docs * grow
    change_total = sum(f.change for f in fields) + other
    if online:
        # the target is built beside the source: both exist until the cut-over
        vector_after = sum(f.index_after for f in fields)
        vector_mb = stats.vector_index_mb
        other_index = max(stats.total_mb - vector_mb, 0.0) * MIB
        untouched = sum(
            vector_index_bytes(f.attrs, docs).total
            for f in target.vector_fields
            if f.name not in {m.field for m in fields}
        )
        peak = int(other_index + vector_after + untouched)
        if not target.vector_fields:
            peak = int(other_index + vector_mb * MIB)
        peak += (
            shadow_documents
            if finish
            else sum(f.documents_after - f.documents_before for f in fields)
        )
    else:
        # the source index is dropped first: the run never holds more than the end state
        peak = max(change_total, 0)
    return MemoryModel(
        documents=docs,
        fields=fields,
        other_change=other,
        change=change_total,
        peak_growth=peak,
        shadow_documents=shadow_documents,
        backup_disk=backup_disk_bytes(
            docs, backed_up, average_key_bytes=key_bytes, batch_size=batch_size
        ),
    )


def plan_memory(plan: MigrationPlan, *, batch_size: int = DEFAULT_BATCH_SIZE) -> MemoryModel:
    """:func:`model_memory` for a plan."""
    from redismigrate.plan import Online

    reencode = getattr(plan.mode, "reencode", None)
    shadow = {f.field: f.shadow_field for f in reencode.fields} if reencode is not None else None
    return model_memory(
        source=plan.source.schema_snapshot,
        target=plan.merged_target_schema,
        stats=plan.source.stats_snapshot,
        vector_changes=plan.vector_changes,
        renames=plan.rename_operations,
        online=isinstance(plan.mode, Online),
        key_sample=plan.source.keyspace.key_sample,
        batch_size=batch_size,
        finish=reencode is not None and reencode.variant == "finish",
        shadow_fields=shadow,
    )


def mb(n: float) -> str:
    """Bytes as MB (2**20), one decimal: the unit plan, estimate and report use."""
    return f"{n / MIB:,.1f} MB"


def memory_sentence(model: MemoryModel) -> str:
    """The model's figure in words, as the plan, the estimate and the report say it."""
    verb = "frees" if model.change < 0 else "takes"
    parts = []
    if any(f.rewrite_documents for f in model.fields):
        before = sum(f.documents_before for f in model.fields)
        after = sum(f.documents_after for f in model.fields)
        if before:
            parts.append(f"vectors in the documents {mb(before)} -> {mb(after)}")
        else:  # written beside the originals (an online run's shadow fields)
            parts.append(f"new vectors in the documents {mb(after)}")
    index_before = sum(f.index_before for f in model.fields)
    index_after = sum(f.index_after for f in model.fields)
    parts.append(f"vector index {mb(index_before)} -> {mb(index_after)}")
    if model.other_change:
        parts.append(f"renamed keys and fields {mb(model.other_change)}")
    text = (
        f"Memory after the migration: {verb} about {mb(abs(model.change))} over "
        f"{model.documents:,} documents ({', '.join(parts)})"
    )
    if model.backup_disk:
        text += f"; the backup needs {mb(model.backup_disk)} of disk"
    return text


__all__ = [
    "FieldMemory",
    "MemoryModel",
    "VectorIndexBytes",
    "added_field_bytes",
    "backup_disk_bytes",
    "backup_value_bytes",
    "hash_value_bytes",
    "listpack_entry_bytes",
    "mb",
    "memory_sentence",
    "model_memory",
    "plan_memory",
    "sds_bytes",
    "size_class",
    "vector_index_bytes",
]
