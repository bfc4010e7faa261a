"""The flow stage's unit: the optical flow of one chunk's pairs into the flow cache, with a marker.

A chunk's flow covers the pairs ending in it (the bridging pair from the previous chunk of the
shot included). Its marker in the flow cache, keyed by the pairs' cache keys, says all of them
are stored, so a restyle reads one object per chunk instead of one per pair.
"""
from __future__ import annotations

import hashlib
import json

from pipeline.flow import FlowCache, compute_flows
from pipeline.plan import Chunk, flow_pairs

from .job import RenderJob, node_source


def flow_marker_key(cache: FlowCache, pairs) -> str:
    """Key of the marker saying every pair in ``pairs`` is stored (one read instead of one per pair)."""
    blob = "|".join(cache.key(b) for _, b in pairs)
    return f"flowdone/{cache.source_hash[:16]}/{hashlib.sha256(blob.encode()).hexdigest()}"


def flow_chunk_key(job: RenderJob, chunk: Chunk) -> str:
    """Content key of one chunk's flow (source, pairs, size, backend, mask options)."""
    cache, _ = job.flow_cache()
    return flow_marker_key(cache, flow_pairs(job.plan, chunk)).rpartition("/")[2]


def flow_chunk_done(job: RenderJob, chunk: Chunk) -> bool:
    cache, _ = job.flow_cache()
    return cache.storage.exists(flow_marker_key(cache, flow_pairs(job.plan, chunk)))


def flow_for_chunk(job: RenderJob, chunk: Chunk) -> dict:
    """Fill the flow cache with the pairs ending in ``chunk`` (the bridging pair from the previous
    chunk of the shot included); returns {"chunk", "pairs", "computed", "cached"}."""
    cache, backend = job.flow_cache()
    pairs = flow_pairs(job.plan, chunk)
    marker = flow_marker_key(cache, pairs)
    if cache.storage.exists(marker):
        return {"chunk": chunk.id, "pairs": len(pairs), "computed": 0, "cached": len(pairs)}
    if all(cache.has(b) for _, b in pairs):
        counts = {"pairs": len(pairs), "computed": 0, "cached": len(pairs)}
    else:
        counts = compute_flows(node_source(job).info, job.plan, pairs, backend, cache)
    cache.storage.put(marker, json.dumps({"chunk": chunk.id, "pairs": len(pairs)}).encode())
    return {"chunk": chunk.id, **counts}


def flow_report(job: RenderJob, counts: dict) -> dict:
    cfg = job.cfg
    return {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "cache": job.flow_cache_uri,
            "pairs": counts["pairs"], "computed": counts["computed"], "cache_hits": counts["cached"]}
