"""Type stubs of the native module (src/python.rs); use the functions of `tripmine` instead."""

from typing import List, Optional, Tuple

__version__: str

class TripmineError(Exception):
    """Base of tripmine's errors."""

class ConfigError(TripmineError):
    """Bad options or pipeline file (the CLI exits 2)."""

class DataError(TripmineError):
    """Bad input data; the message names the input, column and row (the CLI exits 3)."""

class RunError(TripmineError):
    """The job failed while running: I/O, FAISS, or a bug (the CLI exits 1)."""

class QualityGateError(TripmineError):
    """The outputs were written, but a `fail_if` gate held (the CLI exits 4)."""

    summary_json: str
    summary: dict
    result: object

def mine(
    options_json: str,
    source: Optional[object] = None,
    source_name: str = "<arrow stream>",
    rows: Optional[int] = None,
) -> str:
    """Runs a mining job on `source` (an Arrow stream) or the `paths` option; the summary as JSON."""

def run_pipeline(path: str, overrides: List[str] = ..., force: bool = False) -> str:
    """Runs the job a pipeline file describes; the summary as JSON."""

def set_threads(n: Optional[int] = None) -> None:
    """Threads of later jobs that set no `threads` (None: all cores)."""

def options() -> List[Tuple[str, str, str]]:
    """Every option: (name, pipeline-file key, help)."""

def check_options(options_json: str, in_memory: bool = False) -> None:
    """Checks options as a job would; raises the same ConfigError."""

def plan(
    options_json: str,
    work: str,
    segment_anchors: int,
    source: Optional[object] = None,
    source_name: str = "<arrow stream>",
    rows: Optional[int] = None,
) -> str:
    """Cluster runs, step 1: reads, indexes, tunes, writes the plan into `work`; its figures as JSON."""

def mine_segment(work: str, segment: int, threads: Optional[int] = None) -> str:
    """Cluster runs, step 2: mines one segment of the plan in `work`; its figures as JSON."""

def finish(work: str) -> str:
    """Cluster runs, step 3: merges the segments and writes the outputs; the summary as JSON."""
