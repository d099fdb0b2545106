"""The same mining job on a Ray cluster, with the same outputs as one machine.

::

    import ray, tripmine.ray
    ray.init()
    result = tripmine.ray.mine("s3fs-mount/embeddings/*.parquet", out="/shared/triplets/",
                               report="/shared/report.parquet", work_dir="/shared/tripmine-work",
                               num_negatives=5)

The job runs in three steps, as Ray Core tasks (not Ray Data: its actor pools are known to hang
on small clusters):

1. **plan**, one task on the driver's node: reads the inputs once, builds and tunes the index
   once, and writes into ``work_dir`` the prepared table (row-major ``f32`` vectors that every
   worker memory-maps, plus ids, labels and passthrough columns in an Arrow IPC file), the index
   and the plan;
2. **segments**, one task per segment of anchors, spread over the nodes (``num_cpus``,
   ``memory``, ``max_retries`` per task; native threads set from the task's CPUs): each maps the
   table, loads the index, mines its anchors and writes its blocks to ``work_dir`` atomically,
   so a retried task rewrites the same file;
3. **finish**, one task on the driver's node: replays the segments in order through the same
   code as a single run and writes ``out`` and ``report`` (and the manifest) there.

The triplets and the report equal ``tripmine.mine`` with the same options (the same rows in the
same order, the same report figures): an anchor's triplets depend on that anchor alone, and
what depends on the whole table (recall tuning, ``index="auto"``'s choice) the plan decides
once. ``work_dir`` must be storage every node reads (a shared file system); on a one-node
cluster a temporary folder is used when it is not given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import (
    QualityGateError,
    TripmineError,
    Result,
    _attach_summary,
    _has_retrieval_tables,
    _json_default,
    _native,
    _resolve_retrieval_inputs,
    _resolve_source,
    _source_name,
)

__all__ = ["mine"]

log = logging.getLogger("tripmine")

# Options that name files: made absolute on the driver, since tasks run in other folders.
_PATH_OPTIONS = (
    "paths", "queries", "corpus", "qrels", "load_index", "out", "report", "summary_json",
    "save_index", "report_html", "suspects", "scratch_dir", "delta", "state",
)


def _absolute(options: Dict[str, Any]) -> None:
    for key in _PATH_OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            options[key] = [_absolute_path(v) for v in value]
        else:
            options[key] = _absolute_path(value)


def _absolute_path(value: Any) -> str:
    text = os.fspath(value)
    # A folder output keeps its trailing slash.
    return os.path.join(os.getcwd(), text) if not os.path.isabs(text) else text


def _plan_task(options_json: str, work: str, segment_anchors: int, table: Any, name: str) -> Dict[str, Any]:
    if table is None:
        return json.loads(_native.plan(options_json, work, segment_anchors))
    return json.loads(_native.plan(options_json, work, segment_anchors, table, name, table.num_rows))


def _as_table(stream: Any) -> Any:
    """A pyarrow Table of an Arrow stream (a reader cannot travel through the object store)."""
    import pyarrow as pa

    if isinstance(stream, pa.Table):
        return stream
    return pa.RecordBatchReader.from_stream(stream).read_all()


def _segment_task(work: str, segment: int, threads: int) -> Dict[str, Any]:
    return json.loads(_native.mine_segment(work, segment, threads))


def _finish_task(work: str) -> str:
    try:
        return _native.finish(work)
    except QualityGateError as gated:
        # Crosses back to the driver as a plain value: the exception's attributes would not.
        return json.dumps({"__gated__": str(gated), "summary": getattr(gated, "summary_json", None)})


def _show_progress(show: bool, done: int, segments: int, started: float) -> None:
    """One line on a terminal: segments mined so far, and time elapsed."""
    if show:
        elapsed = time.monotonic() - started
        sys.stderr.write(f"\r    mining {done}/{segments} segments, {elapsed:.0f} s elapsed\033[K")
        sys.stderr.flush()


def _get(ref: Any) -> Any:
    """The task's result; a tripmine error raised in the task is raised here as itself
    (``DataError``, ``ConfigError``, ...), not wrapped in Ray's ``RayTaskError``."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, TripmineError):
            raise cause from None
        raise


def mine(
    source: Any = None,
    *,
    out: os.PathLike | str,
    report: os.PathLike | str,
    work_dir: Optional[os.PathLike | str] = None,
    segment_anchors: int = 65_536,
    num_cpus: int = 1,
    memory: Optional[int] = None,
    max_retries: int = 3,
    runtime_env: Optional[Dict[str, Any]] = None,
    embeddings: Any = None,
    labels: Any = None,
    ids: Any = None,
    **options: Any,
) -> Result:
    """Mines triplets on the Ray cluster ``ray.init`` connected to (started if none is).

    Args:
        source: as :func:`tripmine.mine`: a Parquet path, a list of paths, or an Arrow tabular
            object (sent to the plan task through Ray's object store). Paths are read by the
            plan task on the driver's node.
        out: where the triplets go (a Parquet file, or a folder of parts when it ends in
            ``/``), written on the driver's node.
        report: where the loss report goes.
        work_dir: the work folder: storage every node reads. Default: a temporary folder,
            removed afterwards (a one-node cluster only).
        segment_anchors: anchors per segment task (the outputs do not depend on it).
        num_cpus: CPUs per task, and the native threads each task runs.
        memory: bytes of memory Ray reserves per task (schedules them so that they fit).
        max_retries: how often Ray retries a task whose worker died.
        runtime_env: Ray's runtime environment for every task (e.g. ``env_vars``).
        embeddings, labels, ids: as :func:`tripmine.mine`.
        **options: the options of :func:`tripmine.mine` (``num_negatives=5``,
            ``index="auto"``, ``memory_limit="2GiB"`` per task, ...).

    Returns:
        A :class:`tripmine.Result` read from ``out`` and ``report``.
    """
    if not ray.is_initialized():
        ray.init()
    stream = _resolve_source(source, embeddings, labels, ids, options)
    name = "<arrays>" if embeddings is not None else _source_name(source)
    own_work = work_dir is None
    if own_work:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if nodes > 1:
            log.warning(
                "work_dir not given on a cluster of %d nodes: using a temporary folder of this "
                "machine, which segment tasks on other machines cannot read; give work_dir= "
                "on storage every node reads",
                nodes,
            )
    work = Path(tempfile.mkdtemp(prefix="tripmine-ray-")) if own_work else Path(work_dir)
    work = work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    # Retrieval tables given as Arrow objects are written to the work folder (shared).
    inputs = work / "inputs" if _has_retrieval_tables(options) else None
    if inputs is not None:
        inputs.mkdir(exist_ok=True)
    _resolve_retrieval_inputs(options, inputs)
    options["out"] = os.fspath(out)
    options["report"] = os.fspath(report)
    _absolute(options)
    # Progress comes from finished segments: logged, and on a terminal a line on stderr (no
    # task draws a bar). Native threads follow the task's CPUs (plan and finish read
    # `threads`; segments are told).
    show = bool(options.get("progress", True)) and sys.stderr.isatty()
    options["progress"] = False
    options.setdefault("threads", num_cpus)
    options_json = json.dumps(options, default=_json_default)
    # Bad options fail here, as tripmine.mine's do, before any task starts.
    _native.check_options(options_json, stream is not None)

    here = ray.get_runtime_context().get_node_id()
    pinned = NodeAffinitySchedulingStrategy(here, soft=False)
    common: Dict[str, Any] = {"num_cpus": num_cpus, "max_retries": max_retries}
    if memory is not None:
        common["memory"] = memory
    if runtime_env is not None:
        common["runtime_env"] = runtime_env
    remote = lambda f, **o: ray.remote(f).options(**common, **o)  # noqa: E731
    try:
        started = time.monotonic()
        plan = _get(
            remote(_plan_task, scheduling_strategy=pinned).remote(
                options_json, os.fspath(work), segment_anchors,
                ray.put(_as_table(stream)) if stream is not None else None, name,
            )
        )
        segments = plan["segments"]
        log.info(
            "planned %d anchors in %d segments (index %s) in %.1f s",
            plan["anchors"], segments, plan["index"], time.monotonic() - started,
        )
        segment = remote(_segment_task, scheduling_strategy="SPREAD")
        pending: List[Any] = [segment.remote(os.fspath(work), i, num_cpus) for i in range(segments)]
        done = 0
        mining_started = time.monotonic()
        _show_progress(show, done, segments, mining_started)
        while pending:
            try:
                finished, pending = ray.wait(pending, num_returns=1)
                figures = _get(finished[0])
            except BaseException:
                # Ctrl-C, or a segment that failed for good: the others are not waited for.
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            done += 1
            log.info(
                "segment %d mined: %d anchors, %d triplets in %.1f s (%d of %d segments)",
                figures["segment"], figures["anchors"], figures["triplets"], figures["seconds"],
                done, segments,
            )
            _show_progress(show, done, segments, mining_started)
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        summary = _get(
            remote(_finish_task, scheduling_strategy=pinned).remote(os.fspath(work))
        )
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    parsed = json.loads(summary)
    if isinstance(parsed, dict) and "__gated__" in parsed:
        gated = QualityGateError(parsed["__gated__"])
        gated.summary_json = parsed["summary"]
        _attach_summary(gated)
        gated.result = Result(gated.summary, Path(options["out"]), Path(options["report"]))
        raise gated
    return Result(parsed, Path(options["out"]), Path(options["report"]))
