"""tripmine: mine triplets for metric learning from labelled embeddings, exactly and fast.

The same job as the ``tripmine`` command line, callable from Python::

    import tripmine
    result = tripmine.mine(table, num_negatives=5, metric="cosine")
    result.triplets   # pyarrow.Table, one row per (anchor, positive, negative)
    result.report     # pyarrow.Table, the loss report
    result.summary    # dict, as `--summary-json` writes it

``source`` is a path, a list of paths, or any Arrow tabular object (a pyarrow Table or
RecordBatchReader, a polars DataFrame, a Hugging Face ``Dataset``: anything with
``__arrow_c_stream__``), or give ``embeddings=`` (a 2-D array) with ``labels=``. Options are the
CLI's flags with underscores, checked by the same code with the same messages.

While a job runs the GIL is released, Ctrl-C stops it (``KeyboardInterrupt``; no output is
left half-written), and its log lines go to the ``logging`` logger ``tripmine``. Errors are
:class:`ConfigError`, :class:`DataError`, :class:`RunError` and :class:`QualityGateError`, all
:class:`TripmineError`, matching the CLI's exit codes 2, 3, 1 and 4.

The same job on a Ray cluster, with the same outputs: :func:`tripmine.ray.mine`
(``pip install 'tripmine[ray]'``; the module is imported on its own, ``import tripmine.ray``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import _native
from ._native import (
    ConfigError,
    DataError,
    QualityGateError,
    RunError,
    TripmineError,
    __version__,
    set_threads,
)
from .hard_negatives import mine_hard_negatives

__all__ = [
    "mine",
    "run",
    "options",
    "set_threads",
    "mine_hard_negatives",
    "Result",
    "TripmineError",
    "ConfigError",
    "DataError",
    "RunError",
    "QualityGateError",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Result:
    """What a mining job gave.

    ``triplets`` and ``report`` are read from the job's outputs when first used (memory-mapped
    when they were written to ``out=`` / ``report=``, read at once when the job wrote them to a
    temporary folder that is gone by now).
    """

    summary: Dict[str, Any]
    out: Optional[Path] = None
    report_path: Optional[Path] = None
    _triplets: Any = field(default=None, repr=False)
    _report: Any = field(default=None, repr=False)

    @property
    def triplets(self) -> "pyarrow.Table":  # noqa: F821
        """The triplets, as the ``out`` Parquet file (or folder of parts) holds them."""
        if self._triplets is None:
            self._triplets = _read_parquet(self.out)
        return self._triplets

    @property
    def report(self) -> "pyarrow.Table":  # noqa: F821
        """The loss report, as the ``report`` Parquet file holds it."""
        if self._report is None:
            self._report = _read_parquet(self.report_path)
        return self._report


def _read_parquet(path: Optional[Path]) -> "pyarrow.Table":  # noqa: F821
    import pyarrow.parquet as pq

    if path is None:
        raise RunError("the job wrote no such output")
    return pq.read_table(path, memory_map=True)


def options() -> List[Dict[str, str]]:
    """Every option ``mine`` takes: its name, its pipeline-file key and its help."""
    return [
        {"name": name, "key": key, "help": help}
        for name, key, help in _native.options()
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not an option value")


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _source_name(source: Any) -> str:
    kind = type(source)
    return f"<{kind.__module__.split('.')[0]}.{kind.__name__}>"


def _arrow_source(source: Any) -> Any:
    """An object with ``__arrow_c_stream__`` for ``source``, or None when it is not tabular."""
    # A Hugging Face Dataset: its Arrow table, with any selection or shuffle applied first.
    if hasattr(source, "_indices") and hasattr(source, "data"):
        if source._indices is not None:
            source = source.flatten_indices()
        return source.data.table
    if hasattr(source, "__arrow_c_stream__"):
        return source
    if type(source).__module__.startswith("pandas"):
        import pyarrow as pa

        return pa.Table.from_pandas(source, preserve_index=False)
    return None


def _rows_of(source: Any) -> Optional[int]:
    for attribute in ("num_rows", "height"):
        rows = getattr(source, attribute, None)
        if isinstance(rows, int):
            return rows
    return None


def _table_from_arrays(
    embeddings: Any, labels: Any, ids: Any, names: Dict[str, str]
) -> "pyarrow.Table":  # noqa: F821
    import numpy as np
    import pyarrow as pa

    vectors = np.asarray(embeddings)
    if vectors.ndim != 2:
        raise DataError(f"embeddings: expected a 2-D array (rows x dimension), got shape {vectors.shape}")
    if vectors.dtype not in (np.float16, np.float32, np.float64):
        raise DataError(f"embeddings: expected floats, got {vectors.dtype}")
    vectors = np.ascontiguousarray(vectors)
    rows, dim = vectors.shape
    # A view of the numpy buffer: no copy on the way to Rust either.
    columns = {
        names["embedding"]: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    }
    for name, values in ((names["label"], labels), (names["id"], ids)):
        if values is None:
            continue
        array = pa.array(np.asarray(values)) if not isinstance(values, pa.Array) else values
        if len(array) != rows:
            raise DataError(f"{name}: {len(array)} values for {rows} embeddings")
        columns[name] = array
    return pa.table(columns)


def _is_paths(value: Any) -> bool:
    """A path, or a list of them."""
    return _is_path(value) or (isinstance(value, (list, tuple)) and all(_is_path(p) for p in value))


def _has_retrieval_tables(options: Dict[str, Any]) -> bool:
    return any(
        options.get(key) is not None and not _is_paths(options[key])
        for key in ("queries", "corpus", "qrels")
    )


def _spill_table(value: Any, path: Path, key: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _arrow_source(value)
    if table is None:
        raise TypeError(f"{key}: expected a path, a list of paths or an Arrow tabular object, got {type(value).__name__}")
    if not isinstance(table, pa.Table):
        table = pa.RecordBatchReader.from_stream(table).read_all()
    pq.write_table(table, path, compression="none")
    return os.fspath(path)


def _resolve_source(
    source: Any, embeddings: Any, labels: Any, ids: Any, options: Dict[str, Any]
) -> Any:
    """The Arrow stream to mine, or None when the rows come from paths (then set as
    ``options["paths"]``) or from retrieval inputs."""
    names = {
        "embedding": options.get("embedding_col") or "embedding",
        "label": options.get("label_col") or "label",
        "id": options.get("id_col") or "id",
    }
    if embeddings is not None:
        if source is not None:
            raise ConfigError("give either a source or embeddings=, not both")
        return _table_from_arrays(embeddings, labels, ids, names)
    if labels is not None or ids is not None:
        raise ConfigError("labels= and ids= go with embeddings=")
    if source is None:
        if not (options.get("queries") or options.get("corpus")):
            raise ConfigError("nothing to mine: give a source, embeddings=, or queries= and corpus=")
        return None
    if _is_path(source):
        options["paths"] = [os.fspath(source)]
        return None
    if _is_paths(source):
        options["paths"] = [os.fspath(p) for p in source]
        return None
    stream = _arrow_source(source)
    if stream is None:
        raise TypeError(
            f"source: expected a path, a list of paths or an Arrow tabular object "
            f"(with __arrow_c_stream__), got {type(source).__name__}"
        )
    return stream


def _resolve_retrieval_inputs(options: Dict[str, Any], scratch: Optional[Path]) -> None:
    """Retrieval inputs as the options take them: paths as they are (``queries`` and
    ``corpus`` as lists), Arrow tables written to Parquet files in ``scratch`` (the retrieval
    reader reads files; the labelled source does not need this)."""
    for key in ("queries", "corpus", "qrels"):
        value = options.get(key)
        if value is None:
            continue
        if _is_path(value):
            options[key] = os.fspath(value) if key == "qrels" else [os.fspath(value)]
        elif not _is_paths(value):
            options[key] = _spill_table(value, scratch / f"{key}.parquet", key)
            if key != "qrels":
                options[key] = [options[key]]


def mine(
    source: Any = None,
    *,
    embeddings: Any = None,
    labels: Any = None,
    ids: Any = None,
    out: Optional[PathLike] = None,
    report: Optional[PathLike] = None,
    **options: Any,
) -> Result:
    """Mines triplets, as ``tripmine mine`` does, and gives them with the report and summary.

    Args:
        source: a Parquet path (file, folder or glob), a list of them, or any Arrow tabular
            object (pyarrow Table or RecordBatchReader, polars DataFrame, Hugging Face
            ``Dataset``, pandas DataFrame). Leave it out to give ``embeddings=`` and
            ``labels=``, or retrieval inputs (``queries=``, ``corpus=``, ``qrels=``: paths, or
            Arrow tabular objects, which are written to a temporary Parquet file first).
        embeddings: a 2-D float array (rows x dimension), instead of ``source``.
        labels: one label per row of ``embeddings`` (integers or strings).
        ids: one id per row of ``embeddings`` (default: the row position).
        out: write the triplets here (a Parquet file, or a folder of parts when it ends in
            ``/``), exactly as the CLI does; default: a temporary file, read and removed.
        report: write the loss report here; default: a temporary file.
        **options: the CLI's flags with underscores, e.g. ``num_negatives=5``,
            ``metric="cosine"``, ``negatives="hard"``, ``index="auto"``, ``memory_limit="1GiB"``,
            ``report_html="r.html"``, ``fail_if=["triplets == 0"]``. ``tripmine.options()``
            lists them all.

    Raises:
        ConfigError: an option is unknown or out of range (the message names it).
        DataError: the input is unusable (the message names the input, column and row).
        QualityGateError: the outputs were written, but a ``fail_if`` gate held; the error's
            ``summary`` (dict) and ``result`` (:class:`Result`) hold what the run gave.
        RunError: the job failed while running (I/O, FAISS).
        KeyboardInterrupt: Ctrl-C; the job stopped and replaced no output.
    """
    stream = _resolve_source(source, embeddings, labels, ids, options)
    scratch = None
    if out is None or report is None or _has_retrieval_tables(options):
        scratch = Path(tempfile.mkdtemp(prefix="tripmine-"))
    _resolve_retrieval_inputs(options, scratch)
    out_path = Path(out) if out is not None else scratch / "triplets.parquet"
    report_path = Path(report) if report is not None else scratch / "report.parquet"
    options["out"] = os.fspath(out_path)
    options["report"] = os.fspath(report_path)
    options_json = json.dumps(options, default=_json_default)

    def result_of(summary: Dict[str, Any]) -> Result:
        result = Result(summary, out_path, report_path)
        # Read now what was written to the scratch folder: it is removed on return.
        if out is None:
            result._triplets = _read_parquet(out_path)
        if report is None:
            result._report = _read_parquet(report_path)
        return result

    try:
        try:
            if stream is not None:
                name = "<arrays>" if embeddings is not None else _source_name(source)
                summary = _native.mine(options_json, stream, name, _rows_of(stream))
            else:
                summary = _native.mine(options_json)
        except QualityGateError as gated:
            # The outputs were written: the error carries them.
            _attach_summary(gated)
            gated.result = result_of(gated.summary)
            raise
        return result_of(json.loads(summary))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(
    pipeline: PathLike,
    *,
    overrides: Union[None, Dict[str, Any], Sequence[str]] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Runs the job a pipeline file describes, as ``tripmine run`` does; gives its summary.

    Args:
        pipeline: the pipeline file (TOML).
        overrides: keys to override, as ``{"mine.margin": 0.3}`` or ``["mine.margin=0.3"]``.
        force: redo the work even when the manifest says the outputs are up to date.
    """
    if isinstance(overrides, dict):
        pairs = [f"{key}={json.dumps(value, default=_json_default)}" for key, value in overrides.items()]
    else:
        pairs = list(overrides or [])
    try:
        return json.loads(_native.run_pipeline(os.fspath(pipeline), pairs, force))
    except QualityGateError as gated:
        _attach_summary(gated)
        raise


def _attach_summary(gated: QualityGateError) -> None:
    """Sets ``gated.summary`` (a dict) from the summary the native error carries."""
    raw = getattr(gated, "summary_json", None)
    gated.summary = json.loads(raw) if raw is not None else None
