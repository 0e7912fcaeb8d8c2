"""Product writes against the live index: incremental upsert/delete vs rebuilding, and a real PUT.

    .venv/bin/python benchmarks/index_updates.py [--model M] [--index1m DIR] [--n 200]

For each index (44k; 1M if its folder from search_latency.py exists):
* ``upsert``: N products re-added under new ids with their own vectors and texts (index
  work only: BM25 postings and statistics, IVF add, arrays, change log with fsync);
* ``delete``: N products removed;
* the first candidate retrieval after the writes (``HybridRetriever``, BM25 + IVF + RRF; it
  recomputes BM25's cached weights once) and the next one;
* the baseline, in the same run: rebuilding the index from the same arrays (SearchIndex.build).
Then ``SearchService.put_product`` on 20 real fashion44k products (photo, and the voice clip
where there is one): validation + MiniLM + EfficientNet + projection + Whisper + indexing.
If the model has no saved index (``MODEL/index``), it is built first (``fusionrank index``).
Writes benchmarks/results/index_updates.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fusionrank.settings import get_settings  # noqa: E402

HOME = get_settings().home


def timings(a):
    a = np.asarray(a) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def writes(src: Path, n: int, log) -> dict:
    from fusionrank.modalities import LEXICAL_FIELDS, TABLES
    from fusionrank.ranking import HybridRetriever, Queries, QueryEncoder
    from fusionrank.serving.index import RECORD_COLUMNS, SearchIndex

    work = HOME / "bench" / f"updates-{src.name}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    idx = SearchIndex.load(work, log=log)
    qe = QueryEncoder()
    q = "black watch for men"
    v = qe.encode(q)[0]
    retriever = HybridRetriever(idx)  # the candidate stage the service runs (BM25 + IVF per table, RRF)
    query = Queries(["q"], [q], v[None, :])
    retriever.transform(query)
    rng = np.random.default_rng(0)
    rows = rng.choice(np.flatnonzero(idx.live[:idx.n_rows]), n, replace=False)
    t_up = []
    for r in rows:
        rec = {c: idx.records[c][r] for c in RECORD_COLUMNS}
        rec["product_id"] = f"{rec['product_id']}-new"
        lex = {f: idx.lex_text[f][r] for f in LEXICAL_FIELDS}
        vec = {t: (idx.emb[t][r].copy() if idx.emb_mask[t][r] else None) for t in TABLES}
        t0 = time.perf_counter()
        idx.upsert(rec, lex, vec)
        t_up.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    retriever.transform(query)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    retriever.transform(query)
    second = time.perf_counter() - t0
    t_del = []
    for r in rows:
        pid = f"{idx.records['product_id'][r]}-new"
        t0 = time.perf_counter()
        assert idx.delete(pid)
        t_del.append(time.perf_counter() - t0)
    retriever.transform(query)
    # baseline: a full rebuild from the same (live) arrays
    products = len(idx)
    t0 = time.perf_counter()
    idx.compacted(log=lambda m: None)
    rebuild = time.perf_counter() - t0
    del idx
    shutil.rmtree(work, ignore_errors=True)
    out = {"products": products, "upsert_ms": timings(t_up), "delete_ms": timings(t_del), "first_search_after_ms": first * 1e3,
           "next_search_ms": second * 1e3, "rebuild_s": rebuild}
    log(f"  {products:,} products: upsert p50 {out['upsert_ms']['p50']:.2f} ms, delete p50 {out['delete_ms']['p50']:.2f} ms, "
        f"first search after {first * 1e3:.1f} ms, next {second * 1e3:.1f} ms; rebuild {rebuild:.1f} s")
    return out


def real_puts(model: Path, log, n: int = 20) -> dict:
    import pandas as pd

    from fusionrank import schema as S
    from fusionrank.ingest import Catalog
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving.build import open_service

    md = ModelDir.open(model)
    cat = Catalog.load(md.workspace().catalog)
    tmp_index = HOME / "bench" / "updates-put-index"
    shutil.rmtree(tmp_index, ignore_errors=True)
    shutil.copytree(md.index_dir, tmp_index)
    svc = open_service(model, tmp_index, data_dir=HOME / "bench" / "updates-put-data", log=lambda m: None)
    p = cat.products
    with_audio = p[p[S.AUDIO].notna()].head(n // 2)
    without = p[p[S.AUDIO].isna()].head(n - len(with_audio))
    t = {"with voice clip": [], "photo only": []}
    for kind, frame in (("with voice clip", with_audio), ("photo only", without)):
        for _, row in frame.iterrows():
            body = {c: row[c] for c in (S.TITLE, S.CATEGORY, S.BRAND, S.COLOR, S.IMAGE, S.AUDIO, S.DESCRIPTION)
                    if c in row and not (isinstance(row[c], float) and pd.isna(row[c])) and row[c] is not None}
            body[S.PRODUCT_ID] = f"{row[S.PRODUCT_ID]}-put"
            t0 = time.perf_counter()
            out = svc.put_product(body)
            t[kind].append(time.perf_counter() - t0)
            assert out["product"]["product_id"] == body[S.PRODUCT_ID]
    res = {k: timings(v[1:]) for k, v in t.items()}  # the first PUT of each kind loads the encoders
    res["first_put_s"] = {k: v[0] for k, v in t.items()}
    log("  PUT (encode + index): " + ", ".join(f"{k} p50 {v['p50']:.0f} ms" for k, v in res.items() if k != "first_put_s"))
    svc.close()
    shutil.rmtree(tmp_index, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=HOME / "models" / "fashion44k-full")
    ap.add_argument("--index1m", type=Path, default=HOME / "bench" / "index-1m")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    log = lambda m: print(m, flush=True)  # noqa: E731
    from fusionrank.modeldir import ModelDir

    md = ModelDir.open(a.model)
    if not (md.index_dir / "index.json").exists():
        log(f"{md.index_dir}: no index; building it (what `fusionrank index {a.model}` does)")
        md.build_index(log=log)
    res = {"44k": writes(md.index_dir, a.n, log)}
    if (a.index1m / "index.json").exists():
        res["1m"] = writes(a.index1m, a.n, log)
    res["put"] = real_puts(a.model, log)
    L = ["# Product writes on the live index", "",
         f"{a.n} upserts (new ids, precomputed vectors) then {a.n} deletes, one at a time, each appended to the change log "
         "with fsync; the baseline is rebuilding the index from the same arrays, in the same run.", "",
         "| index | upsert p50 / p99 ms | delete p50 / p99 ms | first search after writes ms | next search ms | full rebuild s | rebuild / upsert |",
         "|---|---|---|---|---|---|---|"]
    for k in ("44k", "1m"):
        r = res.get(k)
        if r:
            L.append(f"| {r['products']:,} | {r['upsert_ms']['p50']:.2f} / {r['upsert_ms']['p99']:.2f} | {r['delete_ms']['p50']:.2f} / "
                     f"{r['delete_ms']['p99']:.2f} | {r['first_search_after_ms']:.1f} | {r['next_search_ms']:.1f} | {r['rebuild_s']:.1f} | "
                     f"{r['rebuild_s'] * 1e3 / r['upsert_ms']['p50']:,.0f}x |")
    p = res["put"]
    L += ["", "`SearchService.put_product` (what `PUT /products/{id}` runs) on real fashion44k products, 44k index: "
          "validation, MiniLM title, EfficientNet photo + projection, Whisper + MiniLM for voice clips, indexing.", "",
          "| product | p50 ms | p99 ms | first PUT (loads encoders) s |", "|---|---|---|---|"]
    for k in ("with voice clip", "photo only"):
        L.append(f"| {k} | {p[k]['p50']:.0f} | {p[k]['p99']:.0f} | {p['first_put_s'][k]:.1f} |")
    out = ROOT / "benchmarks" / "results" / "index_updates.md"
    out.write_text("\n".join(L) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(res, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
