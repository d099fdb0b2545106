"""tripmine.mine_hard_negatives against an oracle of sentence-transformers' definitions,
written here with numpy, on a tiny model (a class with `encode`, nothing downloaded)."""

import hashlib

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

import tripmine  # noqa: E402

WORDS = "red green blue cat dog fish tree river stone cloud rain sun moon star road city".split()


class TinyModel:
    """Bag of hashed words in 24 dimensions, plus a text-specific wobble: similar texts share
    words, and no two texts embed alike."""

    def encode(self, texts):
        out = np.zeros((len(texts), 24), np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                h = hashlib.sha256(word.encode()).digest()
                out[i] += np.frombuffer(h[:24], np.uint8).astype(np.float32) / 255.0 - 0.5
            wobble = hashlib.sha256(text.encode()).digest()
            out[i] += 0.3 * (np.frombuffer(wobble[:24], np.uint8).astype(np.float32) / 255.0 - 0.5)
        return out


def pairs_dataset(rows=60, seed=1):
    rng = np.random.default_rng(seed)
    anchors, positives = [], []
    for i in range(rows):
        words = list(rng.choice(WORDS, 3, replace=False))
        # Some anchors repeat: one query with several positives.
        anchor = " ".join(words) if i % 7 else " ".join(anchors[-1].split()) if anchors else " ".join(words)
        anchors.append(anchor)
        positives.append(" ".join(words[:2] + list(rng.choice(WORDS, 2))) + f" #{i}")
    return datasets.Dataset.from_dict({"query": anchors, "answer": positives})


def oracle(dataset, model, corpus=None, range_min=0, range_max=None, max_score=None, min_score=None,
           absolute_margin=None, relative_margin=None, num_negatives=3, output_format="triplet"):
    """sentence-transformers' mine_hard_negatives with sampling_strategy="top", exact search."""
    a_col, p_col = dataset.column_names[:2]
    anchors, positives = list(dataset[a_col]), list(dataset[p_col])
    queries = list(dict.fromkeys(anchors))
    docs = list(dict.fromkeys((list(corpus) if corpus is not None else []) + positives)) if corpus is not None else list(dict.fromkeys(positives))
    q_of, d_of = {q: i for i, q in enumerate(queries)}, {d: i for i, d in enumerate(docs)}
    pos = [[] for _ in queries]
    for a, p in zip(anchors, positives):
        pos[q_of[a]].append(d_of[p])
    max_pos = max(len(p) for p in pos)
    if range_max is None:
        extra = 10 if (absolute_margin is not None or relative_margin is not None or max_score is not None) else 1
        range_max = range_min + num_negatives * extra + max_pos
    qv, dv = model.encode(queries).astype(np.float64), model.encode(docs).astype(np.float64)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    dv /= np.linalg.norm(dv, axis=1, keepdims=True)
    sim = qv @ dv.T
    chosen = []
    for q in range(len(queries)):
        order = sorted(range(len(docs)), key=lambda d: (-sim[q, d], d))[: range_max + max_pos]
        least_positive = min(sim[q, d] for d in pos[q])
        ok = []
        for d in order:
            s = sim[q, d]
            if d in pos[q]:
                continue
            if absolute_margin is not None and s + absolute_margin > least_positive:
                continue
            if relative_margin is not None and s > least_positive * (1 - relative_margin):
                continue
            if max_score is not None and s > max_score:
                continue
            if min_score is not None and s < min_score:
                continue
            ok.append(d)
        chosen.append(ok[:range_max][range_min:][:num_negatives])
    data = {}
    if output_format == "triplet":
        data = {a_col: [], p_col: [], "negative": []}
        for q in range(len(queries)):
            for p in pos[q]:
                for n in chosen[q]:
                    data[a_col].append(queries[q]); data[p_col].append(docs[p]); data["negative"].append(docs[n])
    elif output_format == "labeled-pair":
        data = {a_col: [], p_col: [], "label": []}
        for q in range(len(queries)):
            for d, label in [(p, 1) for p in pos[q]] + [(n, 0) for n in chosen[q]]:
                data[a_col].append(queries[q]); data[p_col].append(docs[d]); data["label"].append(label)
    elif output_format in ("n-tuple", "n-tuple-scores"):
        data = {a_col: [], p_col: [], **{f"negative_{i}": [] for i in range(1, num_negatives + 1)}}
        scores = []
        for q in range(len(queries)):
            if len(chosen[q]) < num_negatives:
                continue
            for p in pos[q]:
                data[a_col].append(queries[q]); data[p_col].append(docs[p])
                for i, n in enumerate(chosen[q], 1):
                    data[f"negative_{i}"].append(docs[n])
                scores.append([sim[q, p]] + [sim[q, n] for n in chosen[q]])
        if output_format == "n-tuple-scores":
            data["score"] = scores
    else:
        data = {a_col: [], p_col: [], "labels": []}
        for q in range(len(queries)):
            if not chosen[q]:
                continue
            for p in pos[q]:
                data[a_col].append(queries[q]); data[p_col].append([docs[p]] + [docs[n] for n in chosen[q]])
                data["labels"].append([1] + [0] * len(chosen[q]))
    return data


CASES = [
    dict(),
    dict(num_negatives=5, range_min=2),
    dict(relative_margin=0.05, num_negatives=4),
    dict(absolute_margin=0.02, max_score=0.9, min_score=0.0, num_negatives=2),
    dict(range_min=1, range_max=12, num_negatives=3),
]


@pytest.mark.parametrize("case", CASES, ids=["defaults", "range_min", "relative", "absolute+scores", "window"])
def test_top_negatives_equal_the_oracle(case):
    dataset, model = pairs_dataset(), TinyModel()
    got = tripmine.mine_hard_negatives(dataset, model, verbose=False, **case)
    assert got.to_dict() == oracle(dataset, model, **case)
    assert len(got) > 0


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list"])
def test_every_output_format_equals_the_oracle(output_format):
    dataset, model = pairs_dataset(), TinyModel()
    got = tripmine.mine_hard_negatives(dataset, model, output_format=output_format, num_negatives=3, relative_margin=0.1, verbose=False).to_dict()
    want = oracle(dataset, model, output_format=output_format, num_negatives=3, relative_margin=0.1)
    if output_format == "n-tuple-scores":
        np.testing.assert_allclose(np.array(got.pop("score")), np.array(want.pop("score")), atol=1e-5)
    assert got == want


def test_an_extra_corpus_adds_candidates():
    dataset, model = pairs_dataset(), TinyModel()
    corpus = [" ".join(WORDS[i : i + 3]) for i in range(len(WORDS) - 3)]
    got = tripmine.mine_hard_negatives(dataset, model, corpus=corpus, num_negatives=4, verbose=False)
    want = oracle(dataset, model, corpus=corpus, num_negatives=4)
    assert got.to_dict() == want
    assert set(want["negative"]) & set(corpus)


def test_embeddings_can_replace_the_model():
    dataset, model = pairs_dataset(), TinyModel()
    got = tripmine.mine_hard_negatives(
        dataset,
        anchor_embeddings=model.encode(dataset["query"]),
        corpus_embeddings=model.encode(dataset["answer"]),
        verbose=False,
    )
    assert got.to_dict() == oracle(dataset, model)


def test_random_sampling_draws_from_the_eligible_negatives_reproducibly():
    dataset, model = pairs_dataset(), TinyModel()
    # Every eligible negative of each query: the top ones, as deep as the window goes.
    eligible = oracle(dataset, model, range_max=30, num_negatives=30)
    allowed = {}
    for a, n in zip(eligible["query"], eligible["negative"]):
        allowed.setdefault(a, set()).add(n)
    first = tripmine.mine_hard_negatives(dataset, model, range_max=30, num_negatives=3, sampling_strategy="random", seed=5, verbose=False)
    again = tripmine.mine_hard_negatives(dataset, model, range_max=30, num_negatives=3, sampling_strategy="random", seed=5, verbose=False)
    assert first.to_dict() == again.to_dict()
    for a, n in zip(first["query"], first["negative"]):
        assert n in allowed[a]
    top = tripmine.mine_hard_negatives(dataset, model, range_max=30, num_negatives=3, verbose=False)
    assert first.to_dict() != top.to_dict()


def test_sentence_transformers_arguments_reach_a_model_that_takes_them():
    calls = []

    class PromptedModel(TinyModel):
        def encode_query(self, texts, batch_size=32, prompt_name=None, prompt=None):
            calls.append(("query", batch_size, prompt))
            return self.encode(texts)

    dataset = pairs_dataset()
    got = tripmine.mine_hard_negatives(dataset, PromptedModel(), batch_size=7, query_prompt="q: ", verbose=False)
    assert calls == [("query", 7, "q: ")]
    # The plain `encode` of the same model serves the corpus, called once.
    assert got.to_dict() == oracle(dataset, TinyModel())


def test_unsupported_arguments_are_refused():
    dataset, model = pairs_dataset(), TinyModel()
    with pytest.raises(tripmine.ConfigError, match="cross_encoder"):
        tripmine.mine_hard_negatives(dataset, model, cross_encoder=object())
    with pytest.raises(tripmine.ConfigError, match="include_positives"):
        tripmine.mine_hard_negatives(dataset, model, include_positives=True)
    with pytest.raises(tripmine.ConfigError, match="output_format"):
        tripmine.mine_hard_negatives(dataset, model, output_format="quadruplet")
