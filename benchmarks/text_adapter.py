"""The trained text encoder (``minilm_adapter``) on its own: dense retrieval with and without the adapter.

    .venv/bin/python benchmarks/text_adapter.py --store STORE_DIR --catalog CATALOG_DIR [--args '{"penalty": 0.01}']

Fits the adapter exactly as ``fusionrank train`` does (:func:`fusionrank.adaptation.fit_adapter`:
catalogue pairs from the store, the training split's judgments less the 10% validation
queries, which measure the fit), then scores dense retrieval over the whole catalogue's titles
(query vector . title vector, no ranker, no BM25) for MiniLM and for the adapter:

- **validation**: held-out training queries (what the fit is chosen by);
- **dev**, **dev, new phrasing**, **dev, synonyms**: the 500 dev queries as typed, rephrased,
  and with one word replaced by a synonym no train/dev query uses (the generalisation check's
  parts, ``benchmarks/generalisation.py``). Dev queries are only scored, never trained on.

Metrics: recall@10 of the grade-3 products, NDCG@10 (gain 2^g - 1). Nothing is written to the
store: the fit lives in memory. Writes ``--out`` (JSON) if given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusionrank import schema as S  # noqa: E402
from fusionrank.adaptation import base_query_vectors, fit_adapter, judgment_pairs  # noqa: E402
from fusionrank.encoders import MiniLMAdapter  # noqa: E402
from fusionrank.encoders.adapter import RetrievalCheck  # noqa: E402
from fusionrank.encoders.text import tokenize  # noqa: E402
from fusionrank.experiment import split_frame  # noqa: E402
from fusionrank.ingest import Catalog, split_queries  # noqa: E402
from fusionrank.metrics import evaluate  # noqa: E402
from fusionrank.store import EmbeddingStore  # noqa: E402

from fashion44k_rankers import full_run  # noqa: E402
from generalisation import load_words, rephrased_queries, synonym_queries  # noqa: E402


def dense_scores(adapter: MiniLMAdapter | None, query_vectors: np.ndarray, titles: np.ndarray) -> np.ndarray:
    m = (lambda v: v) if adapter is None else adapter.adapt
    return m(query_vectors) @ m(titles).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--args", default="{}", help="minilm_adapter arguments as JSON")
    ap.add_argument("--title-field", default="title")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cat = Catalog.load(args.catalog)
    store = EmbeddingStore(args.store)
    train_q = split_frame(cat, "train")
    sp = split_queries(train_q, {"train": 1 - args.valid_fraction, "valid": args.valid_fraction}, seed=args.seed)
    tq, vq = train_q[sp == "train"], train_q[sp == "valid"]
    adapter = MiniLMAdapter(**json.loads(args.args))
    fit_adapter(adapter, cat.products, store, args.title_field, tq, vq, cat.qrels, log=print)
    fit_seconds = time.perf_counter() - t0

    ids = np.asarray(cat.products[S.PRODUCT_ID].astype(str))
    titles, tm = store.matrix(f"{args.title_field}.minilm", ids.tolist())
    dev = split_frame(cat, "dev")
    words = load_words()
    seen = {t for q in pd.concat([train_q, dev])[S.QUERY] for t in tokenize(q)}
    parts = {"validation": vq[[S.QUERY_ID, S.QUERY]], "dev": dev[[S.QUERY_ID, S.QUERY]],
             "dev, new phrasing": rephrased_queries(dev, words, set(train_q[S.QUERY].str.lower())),
             "dev, synonyms": synonym_queries(dev, words, seen)}
    rows = []
    for part, pq in parts.items():
        qv = base_query_vectors(pq[S.QUERY].astype(str).tolist())
        qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(pq[S.QUERY_ID]))]
        pairs, prow = judgment_pairs(adapter, cat.products, store, args.title_field, pq, qv, cat.qrels, with_negatives=False)
        check = RetrievalCheck(pairs.left, prow, titles)
        for name, a in (("minilm", None), ("minilm_adapter", adapter)):
            run = full_run(ids, pq[S.QUERY_ID].tolist(), dense_scores(a, qv, titles), 100)
            ndcg = evaluate(qrels, run, ["ndcg@10"]).mean["ndcg@10"]
            rec = check.recall((lambda v: v) if a is None else a.adapt)
            rows.append({"queries": part, "n": len(pq), "encoder": name, "recall@10 (grade 3)": round(rec, 4),
                         "ndcg@10": round(float(ndcg), 4)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(f"fit {fit_seconds:.0f} s; adapter {adapter.config()}; ||W||_F = {np.linalg.norm(adapter.weight_):.3f}")
    if args.out:
        args.out.write_text(json.dumps({"adapter": adapter.config(), "fit_seconds": round(fit_seconds, 1),
                                        "norm_W": float(np.linalg.norm(adapter.weight_)), "history": adapter.history_,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
