"""A derived text encoder (``minilm_adapter``) for one experiment: its training pairs, its fit, its store features.

``fusionrank train`` calls :func:`fit_text_encoder` after ingest and encode (which cached the
base MiniLM vectors) and before the slates are built:

1. pairs of base vectors from the store and the *training* judgments (:func:`adapter_pairs`):
   title <-> transcript of a product, title <-> its projected photo, training query <-> a
   product judged relevant (grade 3) with hard negatives from the base candidate stage (the
   top of MiniLM and BM25 for the query, minus every product judged relevant at all). The
   ranker's validation queries (also from the training split) measure the fit; the
   evaluation split is never read;
2. the fit, cached under ``<store>/models/<encoder>.<key>/`` (the key hashes the encoder's
   config, the query ids and the base features it read) and saved with the model;
3. the adapted store features, derived from the base ones (:func:`derive_features`):
   ``title.minilm_adapter`` from ``title.minilm``, ``transcript.minilm_adapter`` from
   ``transcript.minilm``, ``image_proj.title.minilm_adapter`` from ``image_proj.title``; each
   row hashed from its base row's hash and the adapter's signature, as trained features are.

Opening the model (:meth:`fusionrank.modeldir.ModelDir.catalog_tables`) derives them again when
the store holds another adapter's (a matrix product over cached vectors; nothing is encoded).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import schema as S
from .encode import indexed_titles, inputs_digest
from .encoders import Encoder, PairSet, build_encoder
from .encoders.adapter import MiniLMAdapter, RetrievalCheck
from .errors import FusionrankError
from .modalities import MODALITIES, modality
from .store import EmbeddingStore, text_hashes

TEXT_ENCODER_DIR = "text_encoder"  # a model directory's trained text encoder


# --- store features -------------------------------------------------------------------------------
def derived_features(store: EmbeddingStore, encoder: Encoder, title_fields: Sequence[str]) -> list[tuple[str, str]]:
    """``(base feature, derived feature)`` for every modality table of every title field whose base the store holds."""
    out: dict[str, str] = {}
    for tf in title_fields:
        for m in MODALITIES:
            base, feat = m.store_feature(tf, encoder.base), m.store_feature(tf, encoder.name)
            if store.exists(base):
                out.setdefault(feat, base)
    return [(b, f) for f, b in out.items()]


def derive_features(store: EmbeddingStore | str | Path, encoder: Encoder, title_fields: Sequence[str], log=print) -> dict[str, str]:
    """Write ``encoder.adapt`` of each base feature as the derived feature, unless it already holds exactly that.

    Returns ``{feature: "derived" | "cached"}``.
    """
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    if encoder.base is None:
        raise FusionrankError(f"encoder {encoder.name!r} encodes its inputs itself; nothing to derive")
    sig = encoder.signature()
    done: dict[str, str] = {}
    for base, feat in derived_features(store, encoder, title_fields):
        f = store.load(base)
        want = text_hashes([str(h) for h in f.hashes], sig)
        if store.exists(feat):
            have = store.hashes(feat)
            if len(have) == len(want) and all(have.get(i) == h for i, h in zip(f.ids, want)):
                done[feat] = "cached"
                continue
        store.write(feat, list(f.ids), want, vectors=encoder.adapt(f.vectors),
                    meta={"encoder": encoder.name, "signature": sig, "modality": (f.meta or {}).get("modality"), "base": base})
        done[feat] = "derived"
        log(f"{feat}: {len(f.ids):,} rows derived from {base} ({encoder.name} {sig})")
    return done


# --- training pairs -------------------------------------------------------------------------------
def _vectors(store: EmbeddingStore, feature: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if not store.exists(feature):
        return np.zeros((len(ids), 0), np.float32), np.zeros(len(ids), bool)
    return store.matrix(feature, ids)


def catalogue_pairs(adapter: MiniLMAdapter, products: pd.DataFrame, store: EmbeddingStore, title_field: str,
                    log=print) -> list[PairSet]:
    """The catalogue's own pairs: title <-> transcript, title <-> projected photo (each source optional)."""
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    title, tm = _vectors(store, modality("text").store_feature(title_field, adapter.base), ids)
    other = {"transcript": modality("audio").store_feature(title_field, adapter.base),
             "photo": modality("image").store_feature(title_field, adapter.base)}
    out = []
    for source in ("transcript", "photo"):
        if source not in adapter.sources:
            continue
        feat = other[source]
        vec, m = _vectors(store, feat, ids)
        both = tm & m
        if both.sum() < 2:
            log(f"minilm_adapter: source {source!r} skipped ({feat} gives {int(both.sum())} pairs with a title)")
            continue
        out.append(PairSet(source, title[both], vec[both]))
        log(f"minilm_adapter: {int(both.sum()):,} title <-> {source} pairs")
    return out


def judged_positives(queries: pd.DataFrame, qrels: pd.DataFrame, row_of: dict[str, int], max_positives: int,
                     seed: int) -> tuple[list[int], list[int]]:
    """``(query index, product row)`` of grade-3 judgments, at most ``max_positives`` per query (a seeded sample)."""
    rng = np.random.default_rng(seed)
    qpos = {q: i for i, q in enumerate(queries[S.QUERY_ID])}
    g = qrels[qrels[S.QUERY_ID].isin(qpos) & (qrels["grade"] >= 3)]
    qi, rows = [], []
    for q, part in g.groupby(S.QUERY_ID, sort=False):
        r = [row_of[p] for p in part[S.PRODUCT_ID].astype(str) if p in row_of]
        if len(r) > max_positives:
            r = list(rng.choice(r, max_positives, replace=False))
        qi.extend([qpos[q]] * len(r))
        rows.extend(r)
    return qi, rows


def hard_negatives(query_vectors: np.ndarray, query_texts: Sequence[str], titles: Sequence[str], title_vectors: np.ndarray,
                   relevant: list[set[int]], depth: int, n: int, seed: int) -> np.ndarray:
    """``(queries, n)`` product rows ranked in the top ``depth`` by base MiniLM or BM25 for each query but judged
    relevant (grade >= 2) for none of it; ``n`` drawn at random from those (padded by repeats; -1 if none)."""
    from .ranking.lexical import LexicalField

    rng = np.random.default_rng(seed)
    field = LexicalField.build(list(titles))
    W = field.weights(list(titles)).T.tocsr()  # [vocab, rows]
    out = np.full((len(query_texts), n), -1, np.int64)
    for s in range(0, len(query_texts), 256):
        qv = query_vectors[s:s + 256]
        dense = np.argpartition(-(qv @ title_vectors.T), min(depth, len(titles) - 1), axis=1)[:, :depth]
        bm = (field.query_matrix(list(query_texts[s:s + 256])) @ W).toarray()
        lex = np.argpartition(-bm, min(depth, len(titles) - 1), axis=1)[:, :depth]
        for j in range(len(qv)):
            i = s + j
            cands = [r for r in dict.fromkeys([*dense[j].tolist(), *(lex[j][bm[j, lex[j]] > 0]).tolist()]) if r not in relevant[i]]
            if cands:
                out[i] = rng.choice(cands, n, replace=len(cands) < n)
    return out


def judgment_pairs(adapter: MiniLMAdapter, products: pd.DataFrame, store: EmbeddingStore, title_field: str,
                   queries: pd.DataFrame, query_vectors: np.ndarray, qrels: pd.DataFrame, name: str = "judgments",
                   with_negatives: bool = True) -> tuple[PairSet | None, np.ndarray]:
    """Query <-> judged-relevant product pairs (``None`` if there are none) and the product row of each pair."""
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    title, tm = store.matrix(modality("text").store_feature(title_field, adapter.base), ids)
    row_of = {p: i for i, p in enumerate(ids) if tm[i]}
    qi, rows = judged_positives(queries, qrels, row_of, adapter.max_positives, adapter.seed)
    if len(qi) < 2:
        return None, np.zeros(0, np.int64)
    qi_a, rows_a = np.asarray(qi, np.int64), np.asarray(rows, np.int64)
    negatives = pool = None
    if with_negatives and adapter.hard_negatives > 0:
        qpos = {q: i for i, q in enumerate(queries[S.QUERY_ID])}
        relevant: list[set[int]] = [set() for _ in range(len(queries))]
        g = qrels[qrels[S.QUERY_ID].isin(qpos) & (qrels["grade"] >= 2)]
        for q, p in zip(g[S.QUERY_ID], g[S.PRODUCT_ID].astype(str)):
            if p in row_of:
                relevant[qpos[q]].add(row_of[p])
        neg = hard_negatives(query_vectors, queries[S.QUERY].astype(str).tolist(), indexed_titles(products, title_field),
                             title, relevant, adapter.negative_depth, adapter.hard_negatives, adapter.seed)
        neg = neg[qi_a]
        keep = (neg >= 0).all(1)
        qi_a, rows_a, negatives, pool = qi_a[keep], rows_a[keep], neg[keep], title
    return PairSet(name, query_vectors[qi_a], title[rows_a], negatives, pool, groups=qi_a), rows_a


def base_query_vectors(texts: Sequence[str]) -> np.ndarray:
    """Base MiniLM vectors of queries, through the query path (each text on its own, as served)."""
    from .ranking import QueryEncoder

    return QueryEncoder(text_encoder={"name": MiniLMAdapter.base, "args": {}}, cache_size=len(texts) + 16).encode_many(list(texts))


# --- the fit --------------------------------------------------------------------------------------
def fit_key(adapter: Encoder, store: EmbeddingStore, features: Sequence[str], train_ids: Sequence[str], valid_ids: Sequence[str]) -> str:
    """What a fit depends on: the encoder's config, the base features' rows and the training / validation query ids."""
    parts = {"encoder": adapter.name, "config": adapter.config(), "train": sorted(map(str, train_ids)),
             "valid": sorted(map(str, valid_ids)), "features": {}}
    for f in features:
        if store.exists(f):
            h = store.hashes(f)
            parts["features"][f] = inputs_digest(list(h), list(h.values()))
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def fit_adapter(adapter: MiniLMAdapter, products: pd.DataFrame, store: EmbeddingStore, title_field: str,
                train_queries: pd.DataFrame, valid_queries: pd.DataFrame, qrels: pd.DataFrame | None, log=print) -> MiniLMAdapter:
    """Build the pairs from the store and the training judgments, and fit ``adapter`` on them."""
    pairs = catalogue_pairs(adapter, products, store, title_field, log)
    valid = None
    if "judgments" in adapter.sources and qrels is not None and len(train_queries):
        qv = base_query_vectors(train_queries[S.QUERY].astype(str).tolist())
        jp, _ = judgment_pairs(adapter, products, store, title_field, train_queries, qv, qrels)
        if jp is not None:
            pairs.append(jp)
            log(f"minilm_adapter: {len(jp):,} query <-> product pairs from {len(train_queries):,} training queries, "
                f"{adapter.hard_negatives} hard negatives each")
        if len(valid_queries):
            valid = retrieval_check(adapter, products, store, title_field, valid_queries, qrels)
    return adapter.fit(pairs, valid=valid, log=log)


def retrieval_check(adapter: MiniLMAdapter, products: pd.DataFrame, store: EmbeddingStore, title_field: str,
                    queries: pd.DataFrame, qrels: pd.DataFrame) -> RetrievalCheck | None:
    """Held-out queries' judged-relevant (grade 3) products, to retrieve among the whole catalogue's titles."""
    vv = base_query_vectors(queries[S.QUERY].astype(str).tolist())
    pairs, rows = judgment_pairs(adapter, products, store, title_field, queries, vv, qrels, name="valid", with_negatives=False)
    if pairs is None:
        return None
    pool = store.matrix(modality("text").store_feature(title_field, adapter.base), products[S.PRODUCT_ID].astype(str).tolist())[0]
    return RetrievalCheck(pairs.left, rows, pool)


def fit_text_encoder(config, products: pd.DataFrame, store_dir: str | Path, train_queries: pd.DataFrame,
                     valid_queries: pd.DataFrame, qrels: pd.DataFrame | None, save_to: str | Path, log=print):
    """``config`` itself when its text encoder encodes texts itself (MiniLM); for a derived, trainable one: fit it
    (or reuse the store's fit of the same inputs), save it to ``save_to``, derive its store features for every title
    field, and return ``config`` reading it from ``save_to``."""
    spec = config.text_encoder_spec
    adapter = build_encoder(spec["name"], **spec.get("args", {}))
    if adapter.base is None or not adapter.trainable:
        return config
    store = EmbeddingStore(store_dir)
    tf = config.data.title_field
    fields = list(config.encode_settings().projection_fields)
    used = [m.store_feature(tf, adapter.base) for m in MODALITIES]
    key = fit_key(adapter, store, used, train_queries[S.QUERY_ID].tolist() if len(train_queries) else [],
                  valid_queries[S.QUERY_ID].tolist() if len(valid_queries) else [])
    cached = store.root / "models" / f"{adapter.name}.{key}"
    if (cached / "config.json").exists():
        adapter = Encoder.load(cached)
        log(f"  {adapter.name}: reusing the fit in {cached}")
    else:
        import time

        t0 = time.perf_counter()
        fit_adapter(adapter, products, store, tf, train_queries, valid_queries, qrels, log=lambda m: log("  " + m))
        adapter.save(cached)
        hist = adapter.history_
        base, last = (hist[0].get("valid_recall@10"), hist[-1].get("valid_recall@10")) if hist else (None, None)
        quality = f"; validation queries' recall@10 {base:.4f} (MiniLM) -> {last:.4f}" if base is not None else ""
        log(f"  {adapter.name}: trained in {time.perf_counter() - t0:.1f} s{quality}; saved in {cached}")
    adapter.save(save_to)
    derive_features(store, adapter, fields, log=lambda m: log("  " + m))
    return config.with_text_encoder_state(save_to)
