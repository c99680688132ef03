"""Sample data for the demo and for trying the tool out."""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from redismigrate.aio.indexes import create_index
from redismigrate.schema import IndexSchema

CATEGORIES = ("books", "music", "films", "games", "garden")
DEMO_PATCH = """
version: 1
changes:
  add_fields:
    - {name: brand, type: tag}
  update_fields:
    - name: price
      attrs: {sortable: true}
    - name: embedding
      attrs: {datatype: float16}
"""


def sample_schema(name: str = "demo_idx", dims: int = 128, prefix: str = "demo:") -> IndexSchema:
    """A hash index with text, tag, numeric and an HNSW float32 vector field."""
    return IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix, "storage_type": "hash"},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "category", "type": "tag"},
                {"name": "price", "type": "numeric"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {
                        "dims": dims,
                        "algorithm": "hnsw",
                        "datatype": "float32",
                        "distance_metric": "cosine",
                    },
                },
            ],
        }
    )


async def load_sample_index(
    client: aioredis.Redis,
    *,
    name: str = "demo_idx",
    docs: int = 2000,
    dims: int = 128,
    prefix: str = "demo:",
    seed: int = 7,
    batch: int = 500,
) -> IndexSchema:
    """Create ``name`` and fill it with ``docs`` clustered, normalized embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(CATEGORIES), dims)).astype(np.float32)
    schema = sample_schema(name, dims, prefix)
    await create_index(client, schema)
    for start in range(0, docs, batch):
        count = min(batch, docs - start)
        labels = rng.integers(0, len(CATEGORIES), size=count)
        vectors = centers[labels] + 0.35 * rng.normal(size=(count, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        pipe = client.pipeline(transaction=False)
        for offset in range(count):
            doc_id = start + offset
            category = CATEGORIES[int(labels[offset])]
            pipe.hset(
                f"{prefix}{doc_id}",
                mapping={
                    "title": f"{category} item {doc_id}",
                    "category": category,
                    "price": float(rng.integers(1, 500)),
                    "embedding": vectors[offset].astype(np.float32).tobytes(),
                },
            )
        await pipe.execute()
    return schema
