"""A drop-in for ``sentence_transformers.util.mine_hard_negatives``, mined by tripmine.

Same arguments, same meaning, same output columns and row order as sentence-transformers'
function (as its documentation defines them); the search is tripmine's exact retrieval mode
(cosine similarity, every document compared, no sampling of the corpus), so results do not
depend on ``use_faiss`` or batch sizes. Differences that remain are listed in
:func:`mine_hard_negatives`'s docstring and in the README.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

logger = logging.getLogger("tripmine")

_FORMATS = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")


def _unique(texts: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(texts))


def _accepts(method: Any, name: str) -> bool:
    """Whether ``method`` takes the keyword argument ``name``."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _encode(model: Any, texts: List[str], kind: str, prompt_name: Optional[str], prompt: Optional[str], batch_size: int) -> Any:
    """Embeddings of ``texts`` from anything with ``encode`` (a SentenceTransformer, or not).

    sentence-transformers' keyword arguments are passed only to a method that takes them, so
    that a plain ``encode(texts)`` is called once, and an error inside it is not retried.
    """
    import numpy as np

    method = getattr(model, f"encode_{kind}", None) or model.encode
    wanted = {"batch_size": batch_size, "prompt_name": prompt_name, "prompt": prompt}
    kwargs = {k: v for k, v in wanted.items() if v is not None and _accepts(method, k)}
    vectors = method(texts, **kwargs)
    if hasattr(vectors, "detach"):  # a torch tensor
        vectors = vectors.detach().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)


def mine_hard_negatives(
    dataset: Any,
    model: Any = None,
    anchor_column_name: Optional[str] = None,
    positive_column_name: Optional[str] = None,
    corpus: Optional[List[str]] = None,
    cross_encoder: Any = None,
    range_min: int = 0,
    range_max: Optional[int] = None,
    max_score: Optional[float] = None,
    min_score: Optional[float] = None,
    absolute_margin: Optional[float] = None,
    relative_margin: Optional[float] = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: Optional[str] = None,
    query_prompt: Optional[str] = None,
    corpus_prompt_name: Optional[str] = None,
    corpus_prompt: Optional[str] = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: Any = False,
    verbose: bool = True,
    cache_folder: Optional[str] = None,
    as_triplets: Optional[bool] = None,
    margin: Optional[float] = None,
    *,
    anchor_embeddings: Any = None,
    corpus_embeddings: Any = None,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
) -> Any:
    """Adds hard negatives to a dataset of (anchor, positive) pairs, as sentence-transformers'
    ``mine_hard_negatives`` does, with tripmine's exact search.

    Arguments and their meaning are sentence-transformers' (see its documentation): anchors
    and positives are the first two columns unless named; the corpus is the positives, plus
    ``corpus`` if given, de-duplicated; similarity is cosine; the candidates of a query are its
    ``range_max + max_positives`` most similar documents, less its positives and those that
    ``absolute_margin`` / ``relative_margin`` (against the query's least similar positive),
    ``max_score`` and ``min_score`` exclude; then the first ``range_min`` are skipped and
    ``num_negatives`` taken, the most similar (``"top"``) or at random (``"random"``). Output
    formats: ``triplet``, ``n-tuple``, ``n-tuple-scores``, ``labeled-pair``, ``labeled-list``.

    ``model`` is anything with ``encode(list_of_texts) -> array`` (``encode_query`` and
    ``encode_document`` are used where present, with the prompts). Instead of a model, give
    ``anchor_embeddings`` (one row per row of ``dataset``) and ``corpus_embeddings`` (one row
    per entry of ``corpus`` if given, and then every positive must be in ``corpus``; else one
    row per row of ``dataset``, its positive).

    Differences from sentence-transformers, all documented in the README:

    - ``cross_encoder`` and ``include_positives=True`` are not supported (``ConfigError``).
    - The search is always exact: ``use_faiss``, ``faiss_batch_size`` and ``use_multi_process``
      change nothing (with ``use_faiss`` sentence-transformers searches ``range_max + 1`` deep
      instead of ``range_max + max_positives``; tripmine always does the latter).
    - ``sampling_strategy="random"`` draws with ``numpy.random.default_rng(seed)``, not
      Python's global ``random``: reproducible given ``seed``, but not the same draws.
    - ``cache_folder`` is not used; ``verbose`` logs the statistics to the ``tripmine`` logger
      instead of printing them.
    - Similarities are computed in float32 by tripmine; a candidate within about 1e-6 of a
      margin or score bound may fall on the other side than in PyTorch.

    Extra keyword-only arguments: ``anchor_embeddings``, ``corpus_embeddings``, ``seed`` (for
    ``"random"``), ``threads``.

    Returns:
        datasets.Dataset: in ``output_format``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import ConfigError, DataError, mine

    try:
        from datasets import Dataset
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("mine_hard_negatives returns a datasets.Dataset: pip install datasets") from e

    if cross_encoder is not None:
        raise ConfigError("cross_encoder is not supported by tripmine's mine_hard_negatives")
    if include_positives:
        raise ConfigError("include_positives=True is not supported by tripmine's mine_hard_negatives")
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
    if margin is not None:
        absolute_margin = margin
    if output_format not in _FORMATS:
        raise ConfigError(f"output_format={output_format!r}: must be one of {', '.join(_FORMATS)}")
    if sampling_strategy not in ("top", "random"):
        raise ConfigError(f"sampling_strategy={sampling_strategy!r}: must be 'top' or 'random'")
    if num_negatives < 1:
        raise ConfigError(f"num_negatives={num_negatives}: must be at least 1")
    if range_min < 0:
        raise ConfigError(f"range_min={range_min}: must be at least 0")
    if model is None and (anchor_embeddings is None or corpus_embeddings is None):
        raise ConfigError("give a model, or anchor_embeddings= and corpus_embeddings=")
    if len(dataset) == 0:
        raise DataError("the dataset is empty")

    columns = list(dataset.column_names)
    if len(columns) < 2:
        raise DataError(f"the dataset needs (anchor, positive) columns; it has {columns}")
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        positive_column_name = columns[1]
    anchors: List[str] = list(dataset[anchor_column_name])
    positives: List[str] = list(dataset[positive_column_name])

    queries = _unique(anchors)
    query_of = {text: i for i, text in enumerate(queries)}
    documents = _unique(list(corpus or []) + positives) if corpus is not None else _unique(positives)
    doc_of = {text: i for i, text in enumerate(documents)}
    # Positives of each unique query, in dataset order.
    positives_of: List[List[int]] = [[] for _ in queries]
    for anchor, positive in zip(anchors, positives):
        positives_of[query_of[anchor]].append(doc_of[positive])
    max_positives = max(len(p) for p in positives_of)

    if range_max is None:
        if absolute_margin is not None or relative_margin is not None or max_score is not None:
            range_max = range_min + num_negatives * 10 + max_positives
        else:
            range_max = range_min + num_negatives + max_positives
        if verbose:
            logger.info("Setting range_max to %d based on the provided parameters.", range_max)

    if model is not None:
        query_vectors = _encode(model, queries, "query", query_prompt_name, query_prompt, batch_size)
        doc_vectors = _encode(model, documents, "document", corpus_prompt_name, corpus_prompt, batch_size)
    else:
        given_anchors = np.asarray(anchor_embeddings, dtype=np.float32)
        given_docs = np.asarray(corpus_embeddings, dtype=np.float32)
        if len(given_anchors) != len(anchors):
            raise DataError(f"anchor_embeddings: {len(given_anchors)} rows for {len(anchors)} dataset rows")
        doc_texts = list(corpus) if corpus is not None else positives
        if len(given_docs) != len(doc_texts):
            what = "corpus entries" if corpus is not None else "dataset rows"
            raise DataError(f"corpus_embeddings: {len(given_docs)} rows for {len(doc_texts)} {what}")
        if corpus is not None:
            in_corpus = set(corpus)
            missing = next((i for i, p in enumerate(positives) if p not in in_corpus), None)
            if missing is not None:
                raise DataError(
                    f"row {missing}: its positive is not in corpus; with corpus_embeddings every "
                    "positive must be in corpus"
                )
        first_anchor = {text: i for i, text in reversed(list(enumerate(anchors)))}
        first_doc = {text: i for i, text in reversed(list(enumerate(doc_texts)))}
        query_vectors = given_anchors[[first_anchor[q] for q in queries]]
        doc_vectors = given_docs[[first_doc[d] for d in documents]]

    def vectors(matrix: Any) -> pa.FixedSizeListArray:
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])

    # Candidates: the `range_max + max_positives` most similar documents of each query, less
    # its positives (tripmine's rank window counts positives, as sentence-transformers' topk
    # does), nearest first; the hardest positive gives the least positive similarity.
    window = range_max + max_positives
    with tempfile.TemporaryDirectory(prefix="tripmine-hn-") as scratch:
        paths = {name: os.path.join(scratch, f"{name}.parquet") for name in ("queries", "corpus", "qrels")}
        pq.write_table(pa.table({"id": pa.array(range(len(queries)), pa.int64()), "embedding": vectors(query_vectors)}), paths["queries"])
        pq.write_table(pa.table({"id": pa.array(range(len(documents)), pa.int64()), "embedding": vectors(doc_vectors)}), paths["corpus"])
        pairs = sorted({(q, d) for q, docs in enumerate(positives_of) for d in docs})
        pq.write_table(
            pa.table({
                "query_id": pa.array([q for q, _ in pairs], pa.int64()),
                "doc_id": pa.array([d for _, d in pairs], pa.int64()),
            }),
            paths["qrels"],
        )
        mined = mine(
            queries=paths["queries"],
            corpus=paths["corpus"],
            qrels=paths["qrels"],
            metric="cosine",
            positives="hardest",
            num_positives=1,
            negatives="hardest",
            num_negatives="all",
            range_max=min(window, len(documents)),
            threads=threads,
        ).triplets

    query_ids = mined.column("anchor_id").to_numpy()
    negative_ids = mined.column("negative_id").to_numpy()
    negative_similarity = 1.0 - mined.column("d_an").to_numpy().astype(np.float64)
    least_positive = np.full(len(queries), np.nan)
    least_positive[query_ids] = 1.0 - mined.column("d_ap").to_numpy().astype(np.float64)

    counters = {"absolute_margin": 0, "relative_margin": 0, "max_score": 0, "min_score": 0}
    rng = np.random.default_rng(seed)
    chosen: List[List[int]] = [[] for _ in queries]
    scores: List[List[float]] = [[] for _ in queries]
    order = np.lexsort((negative_ids, -negative_similarity, query_ids))
    bounds = np.searchsorted(query_ids[order], np.arange(len(queries) + 1))
    for q in range(len(queries)):
        rows = order[bounds[q] : bounds[q + 1]]
        docs, sims = negative_ids[rows], negative_similarity[rows]
        keep = np.ones(len(rows), dtype=bool)
        p = least_positive[q]
        for name, bound, drop in (
            ("absolute_margin", absolute_margin, lambda b: sims + b > p),
            ("relative_margin", relative_margin, lambda b: sims > p * (1 - b)),
            ("max_score", max_score, lambda b: sims > b),
            ("min_score", min_score, lambda b: sims < b),
        ):
            if bound is not None:
                dropped = keep & drop(bound)
                counters[name] += int(dropped.sum())
                keep &= ~dropped
        docs, sims = docs[keep][:range_max][range_min:], sims[keep][:range_max][range_min:]
        if sampling_strategy == "top" or len(docs) <= num_negatives:
            picked = np.arange(min(num_negatives, len(docs)))
        else:
            picked = np.sort(rng.choice(len(docs), size=num_negatives, replace=False))
        chosen[q] = [int(d) for d in docs[picked]]
        scores[q] = [float(s) for s in sims[picked]]

    query_norm = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True)
    doc_norm = doc_vectors / np.linalg.norm(doc_vectors, axis=1, keepdims=True)

    def similarity(q: int, d: int) -> float:
        return float(query_norm[q] @ doc_norm[d])

    data: Dict[str, list] = {}
    if output_format == "triplet":
        data = {anchor_column_name: [], positive_column_name: [], "negative": []}
        for q, docs in enumerate(positives_of):
            for d in docs:
                for n in chosen[q]:
                    data[anchor_column_name].append(queries[q])
                    data[positive_column_name].append(documents[d])
                    data["negative"].append(documents[n])
    elif output_format == "labeled-pair":
        data = {anchor_column_name: [], positive_column_name: [], "label": []}
        for q, docs in enumerate(positives_of):
            for d, label in [(d, 1) for d in docs] + [(n, 0) for n in chosen[q]]:
                data[anchor_column_name].append(queries[q])
                data[positive_column_name].append(documents[d])
                data["label"].append(label)
    elif output_format in ("n-tuple", "n-tuple-scores"):
        data = {anchor_column_name: [], positive_column_name: []}
        data.update({f"negative_{i}": [] for i in range(1, num_negatives + 1)})
        if output_format == "n-tuple-scores":
            data["score"] = []
        for q, docs in enumerate(positives_of):
            if len(chosen[q]) < num_negatives:
                continue
            for d in docs:
                data[anchor_column_name].append(queries[q])
                data[positive_column_name].append(documents[d])
                for i, n in enumerate(chosen[q], start=1):
                    data[f"negative_{i}"].append(documents[n])
                if output_format == "n-tuple-scores":
                    data["score"].append([similarity(q, d)] + scores[q])
    else:  # labeled-list
        data = {anchor_column_name: [], positive_column_name: [], "labels": []}
        for q, docs in enumerate(positives_of):
            if not chosen[q]:
                continue
            for d in docs:
                data[anchor_column_name].append(queries[q])
                data[positive_column_name].append([documents[d]] + [documents[n] for n in chosen[q]])
                data["labels"].append([1] + [0] * len(chosen[q]))

    if verbose:
        for name, skipped in counters.items():
            if skipped:
                logger.info("Skipped %d potential negatives due to the %s.", skipped, name)
        short = sum(len(docs) for q, docs in enumerate(positives_of) if len(chosen[q]) < num_negatives)
        if short:
            logger.info("Could not find enough negatives for %d samples.", short)
    return Dataset.from_dict(data)
