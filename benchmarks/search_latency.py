"""/search latency and throughput of `fusionrank serve` at 44k and 1M products, one run.

    .venv/bin/python benchmarks/search_latency.py [--model M] [--requests 1500] [--skip-1m]

For each catalogue size the real CLI server is started (`python -m fusionrank.cli serve`,
one uvicorn process) and driven over loopback by ``benchmarks/loadgen.py`` in its own
process, with a fixed request count: k=10, 200 candidates re-ranked by the full fusion
model (gated fusion MLP of configs/fashion44k.toml), explanations on, as the page asks.

* 44k: fashion44k's real index. Queries are fashion44k's train+dev query texts, each
  used once per run (so the query cache does not help), then a run of repeated queries.
* 1M: the 44k index replicated 23x (1,013,656 products); every copy's embeddings are
  perturbed with Gaussian noise (sigma 0.02 per dimension, cosine to the original
  about 0.93) and re-normalised; texts are repeated, so BM25 posting lists are 23x longer.

Baselines measured in the same run:
* 44k: the training-time path, ``RankingPipeline.search`` in-process over the frozen
  catalogue tables training and evaluation use (``ModelDir.pipeline(ModelDir.catalog_tables())``:
  exact BLAS vector search, the same BM25 fields and query encoder): no HTTP at all.
* 1M: exact (brute-force BLAS) dense search over the same three tables (``ExactVectors``)
  vs the index's IVF-SQ8 ``AnnIndex``.
Also: dev NDCG@10 of the served path (ANN candidates) vs the evaluation pipeline (exact).
If the model has no saved index (``MODEL/index``), it is built first (``fusionrank index``).
Writes benchmarks/results/search_latency.md (+ .json).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"

from fusionrank.settings import get_settings  # noqa: E402

HOME = get_settings().home


def pct(a, qs=(50, 95, 99)):
    a = np.asarray([x for x in a if x is not None], float)
    return {f"p{q}": float(np.percentile(a, q)) for q in qs} | {"mean": float(a.mean()), "n": int(len(a))}


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: Path, index: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FUSIONRANK_ADMIN_KEY": "bench"}
    p = subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--index", str(index), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    import httpx

    t0 = time.time()
    while time.time() - t0 < 900:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return p
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def load(port: int, queries: list[str], requests: int, concurrency: int, tmp: Path) -> dict:
    qf = tmp / "queries.txt"
    qf.write_text("\n".join(queries))
    out = tmp / "load.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}", "--queries", str(qf),
                    "--requests", str(requests), "--concurrency", str(concurrency), "--out", str(out)], check=True)
    r = json.loads(out.read_text())
    ok = [s == 200 for s in r["status"]]
    stages = {}
    for key in ("encode_ms", "retrieve_ms", "features_ms", "rank_ms", "explain_ms", "total_ms"):
        stages[key] = pct([s[key] for s, good in zip(r["server_ms"], ok) if good and s])
    http_over = [l - s["total_ms"] for l, s, good in zip(r["latency_ms"], r["server_ms"], ok) if good and s]
    return {"requests": requests, "concurrency": concurrency, "failed": int(len(ok) - sum(ok)),
            "throughput_rps": requests / r["wall_seconds"], "latency_ms": pct(r["latency_ms"]), "stages_ms": stages,
            "http_and_queueing_ms": pct(http_over)}


def serve_and_load(model, index, port, queries, requests, tmp, log) -> dict:
    srv = start_server(model, index, port)
    try:
        n = json.loads(__import__("httpx").get(f"http://127.0.0.1:{port}/healthz").text)["products"]
        out = {"products": n, "server_rss_mb_loaded": rss_mb(srv.pid)}
        a, b = queries[:requests], queries[requests:2 * requests]
        log(f"  1 client, {len(a)} distinct queries")
        out["one_client"] = load(port, a, len(a), 1, tmp)
        log(f"  8 clients, {len(b)} distinct queries")
        out["eight_clients"] = load(port, b, len(b), 8, tmp)
        log("  1 client, the first run's queries again (query cache hits)")
        out["one_client_cached"] = load(port, a, len(a), 1, tmp)
        out["server_rss_mb_after"] = rss_mb(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    return out


def replicate_attributes(base, live: np.ndarray, copies: int, emb: dict, mask: dict) -> None:
    """Into ``emb`` and ``mask``: ``base``'s attribute tables (the colour evidence: probabilities, not vectors) for
    ``copies`` copies of its products where ``live`` (a bool per row), each copy holding its original's rows unperturbed."""
    from fusionrank.modalities import ATTRIBUTE_TABLES

    rows = np.flatnonzero(live[:base.n_rows])
    for t in ATTRIBUTE_TABLES:
        emb[t] = np.tile(base.emb[t][rows], (copies, 1))
        mask[t] = np.tile(base.emb_mask[t][rows], copies)


def build_1m(src_index: Path, dst: Path, copies: int, sigma: float, log) -> dict:
    from fusionrank.modalities import LEXICAL_FIELDS, TABLES
    from fusionrank.serving.index import RECORD_COLUMNS, CatalogConfig, SearchIndex

    base = SearchIndex.load(src_index, log=log)
    n = base.n_rows
    live = base.live[:n]
    rng = np.random.default_rng(0)
    records = {c: np.tile(base.records[c][:n][live], copies) for c in RECORD_COLUMNS}
    ids = base.records["product_id"][:n][live]
    records["product_id"] = np.asarray([f"{p}" if j == 0 else f"{p}~{j}" for j in range(copies) for p in ids], dtype=object)
    texts = {f: np.tile(base.lex_text[f][:n][live], copies) for f in LEXICAL_FIELDS}
    emb, mask = {}, {}
    for t in TABLES:
        e0 = base.emb[t][:n][live]
        m0 = base.emb_mask[t][:n][live]
        e = np.empty((len(e0) * copies, e0.shape[1]), np.float32)
        for j in range(copies):
            blk = e0 + (0 if j == 0 else rng.normal(0, sigma, e0.shape).astype(np.float32))
            blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-9)
            e[j * len(e0):(j + 1) * len(e0)] = np.where(m0[:, None], blk, 0)
        emb[t], mask[t] = e, np.tile(m0, copies)
        cos = float(np.mean(np.sum(e0[m0][:2000] * e[len(e0):2 * len(e0)][m0][:2000], 1)))
        log(f"  {t}: {len(e):,} rows, cosine(copy, original) {cos:.3f}")
    replicate_attributes(base, live, copies, emb, mask)
    del base
    gc.collect()
    t0 = time.perf_counter()
    cfg = CatalogConfig.model_validate(json.loads((src_index / "index.json").read_text())["config"])
    idx = SearchIndex.build(records, texts, emb, mask, cfg, log=log)
    build_s = time.perf_counter() - t0
    idx.save(dst)
    mem = idx.memory_bytes()
    return {"products": len(idx), "build_seconds": build_s, "memory_bytes": mem}


def exact_vs_ann(index_dir: Path, queries: list[str], log) -> dict:
    """In-process retrieval of the dense sources: exact brute force (training path) vs the IVF index."""
    from fusionrank.ranking import QueryEncoder
    from fusionrank.ranking.vectors import ExactVectors
    from fusionrank.serving.index import SearchIndex

    idx = SearchIndex.load(index_dir, log=log)
    qe = QueryEncoder()
    qv = [qe.encode(q)[0] for q in queries]
    out = {}
    for t, a in idx.vectors.items():
        ex = ExactVectors(idx, t)  # a matrix product over the index's own table (live rows with a vector)
        te, ta, rec = [], [], []
        for v in qv:
            t0 = time.perf_counter()
            r_ex = ex.search(v[None, :], 200)[0]
            te.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            r_an = a.search(v[None, :], 200)[0]
            ta.append((time.perf_counter() - t0) * 1e3)
            rec.append(len(set(r_ex.tolist()) & set(r_an.tolist())) / max(1, len(r_ex)))
        out[t] = {"exact_ms": pct(te), "ann_ms": pct(ta), "recall@200": float(np.mean(rec))}
        log(f"  {t}: exact p50 {out[t]['exact_ms']['p50']:.2f} ms, IVF p50 {out[t]['ann_ms']['p50']:.2f} ms, recall@200 {out[t]['recall@200']:.3f}")
        del ex
    return out


def quality_and_baseline(model: Path, index_dir: Path, dev, qrels, queries: list[str], log) -> dict:
    """dev NDCG@10: evaluation pipeline (exact) vs served path; in-process latency of the training-time search."""
    import torch

    from fusionrank import schema as S
    from fusionrank.metrics import evaluate
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving.build import open_service

    torch.set_num_threads(1)
    md = ModelDir.open(model)
    pipe = md.pipeline(md.catalog_tables(log=lambda m: None))  # frozen tables, exact vector search
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        pipe.search(q, k=10)
        lat.append((time.perf_counter() - t0) * 1e3)
    base = pct(lat)
    log(f"  training-time RankingPipeline.search, in-process: p50 {base['p50']:.1f} p99 {base['p99']:.1f} ms")
    import pandas as pd

    run = pipe.run(dev[S.QUERY_ID].tolist(), dev[S.QUERY].tolist())
    qr = qrels[qrels[S.QUERY_ID].isin(set(dev[S.QUERY_ID]))]
    ev = float(evaluate(qr, run, ["ndcg@10"]).mean["ndcg@10"])
    del pipe
    gc.collect()
    svc = open_service(model, index_dir, log=lambda m: None)
    rows = []
    for qid, q in zip(dev[S.QUERY_ID], dev[S.QUERY]):
        r = svc.search(q, k=10, explain=False)
        rows += [(qid, h["product_id"], h["score"]) for h in r["results"]]
    served = float(evaluate(qr, pd.DataFrame(rows, columns=[S.QUERY_ID, S.PRODUCT_ID, S.SCORE]), ["ndcg@10"]).mean["ndcg@10"])
    log(f"  dev NDCG@10: evaluation pipeline (exact candidates) {ev:.4f}, served (IVF-SQ8 candidates) {served:.4f}")
    return {"baseline_inprocess_ms": base, "ndcg@10_eval_pipeline": ev, "ndcg@10_served": served}


def fmt_row(name, r):
    l, s = r["latency_ms"], r["stages_ms"]
    return (f"| {name} | {r['requests']} | {r['concurrency']} | {r['failed']} | {l['p50']:.1f} | {l['p95']:.1f} | {l['p99']:.1f} | "
            f"{r['throughput_rps']:.0f} | " + " | ".join(f"{s[k]['mean']:.2f}" for k in ("encode_ms", "retrieve_ms", "features_ms",
                                                                                             "rank_ms", "explain_ms"))
            + f" | {r['http_and_queueing_ms']['mean']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=HOME / "models" / "fashion44k-full")
    ap.add_argument("--index44k", type=Path, default=None, help="default: MODEL/index")
    ap.add_argument("--index1m", type=Path, default=HOME / "bench" / "index-1m")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--copies", type=int, default=23)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    from fusionrank import schema as S
    from fusionrank.ingest import Catalog
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving.index import SearchIndex

    tmp = HOME / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    md = ModelDir.open(a.model)
    cat = Catalog.load(md.workspace().catalog)
    qs = cat.queries
    dev = qs[qs["split"] == "dev"].reset_index(drop=True)
    queries = list(dict.fromkeys(qs[S.QUERY].tolist()))  # distinct texts, train then dev
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))]
    res: dict = {"machine": f"{os.cpu_count()} cores", "model": str(a.model), "k": 10}

    idx44 = a.index44k or a.model / "index"
    log(f"44k index: {idx44}")
    if not (idx44 / "index.json").exists():
        log(f"  no index there: building it (what `fusionrank index {a.model}` does)")
        t0 = time.perf_counter()
        md.build_index(index_dir=idx44, log=log)
        res["build_44k_seconds"] = time.perf_counter() - t0
    i44 = SearchIndex.load(idx44, log=log)
    res["memory_44k"] = i44.memory_bytes()
    n44 = len(i44)
    del i44
    log("quality and in-process baseline (44k)")
    res["quality_44k"] = quality_and_baseline(a.model, idx44, dev, cat.qrels, queries[:300], log)
    log("HTTP load, 44k")
    res["http_44k"] = serve_and_load(a.model, idx44, a.port, queries, a.requests, tmp, log)
    res["http_44k"]["index_products"] = n44
    if not a.skip_1m:
        if not (a.index1m / "index.json").exists():
            log(f"building the 1M index ({a.copies} copies) in {a.index1m}")
            res["build_1m"] = build_1m(idx44, a.index1m, a.copies, a.sigma, log)
            gc.collect()
        i1 = SearchIndex.load(a.index1m, log=log)
        res["memory_1m"] = i1.memory_bytes()
        n1 = len(i1)
        del i1
        gc.collect()
        log("exact vs IVF dense retrieval (1M, in-process)")
        res["dense_1m"] = exact_vs_ann(a.index1m, queries[:100], log)
        gc.collect()
        log("HTTP load, 1M")
        res["http_1m"] = serve_and_load(a.model, a.index1m, a.port, queries, a.requests, tmp, log)
        res["http_1m"]["index_products"] = n1
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_latency.json").write_text(json.dumps(res, indent=2, default=float))
    write_md(res)
    print((RESULTS / "search_latency.md").read_text())


def write_md(res: dict) -> None:
    L = ["# /search latency and throughput (fashion44k model, `fusionrank serve`, loopback)", "",
         f"Machine: {res['machine']}, one uvicorn process, torch 1 thread; load from `benchmarks/loadgen.py` in a separate "
         "process with a fixed request count; k=10, 200 candidates re-ranked by the full fusion model with per-modality "
         "explanations. Latencies are client-side (ms); stage columns are the server's own timings (mean ms); "
         "`http+queue` is client latency minus the server's search time.", "",
         "| run | requests | clients | failed | p50 | p95 | p99 | req/s | encode | retrieve | features | rank | explain | http+queue |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in ("44k", "1m"):
        h = res.get(f"http_{size}")
        if not h:
            continue
        for key, name in (("one_client", "1 client, new queries"), ("eight_clients", "8 clients, new queries"),
                          ("one_client_cached", "1 client, repeated queries (cache)")):
            L.append(fmt_row(f"{h['index_products']:,} products: {name}", h[key]))
    L.append("")
    q = res.get("quality_44k")
    if q:
        h1 = res["http_44k"]["one_client"]["latency_ms"]
        b = q["baseline_inprocess_ms"]
        L += ["## Against the training-time search path (44k, same run)", "",
              "| | p50 ms | p99 ms |", "|---|---|---|",
              f"| `RankingPipeline.search` in-process (no HTTP) | {b['p50']:.1f} | {b['p99']:.1f} |",
              f"| served over HTTP, 1 client | {h1['p50']:.1f} | {h1['p99']:.1f} |",
              f"| ratio served / training path | {h1['p50'] / b['p50']:.2f} | {h1['p99'] / b['p99']:.2f} |", "",
              f"dev NDCG@10 (500 queries): evaluation pipeline with exact candidates {q['ndcg@10_eval_pipeline']:.4f}; "
              f"served path (IVF-SQ8 candidates) {q['ndcg@10_served']:.4f} "
              f"(ratio {q['ndcg@10_served'] / q['ndcg@10_eval_pipeline']:.3f}).", ""]
    d = res.get("dense_1m")
    if d:
        L += ["## Dense retrieval at 1M, exact brute force vs IVF-SQ8 (in-process, top 200, 100 queries)", "",
              "| table | exact p50 ms | IVF p50 ms | speed-up | recall@200 of IVF |", "|---|---|---|---|---|"]
        for t, r in d.items():
            L.append(f"| {t} | {r['exact_ms']['p50']:.2f} | {r['ann_ms']['p50']:.2f} | {r['exact_ms']['p50'] / r['ann_ms']['p50']:.1f}x | {r['recall@200']:.3f} |")
        L.append("")
    L += ["## Index memory", "", "| index | products | embeddings | ANN | BM25 | row arrays | bytes / product | server RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    for size in ("44k", "1m"):
        m, h = res.get(f"memory_{size}"), res.get(f"http_{size}")
        if m and h:
            n = h["index_products"]
            L.append(f"| {size} | {n:,} | {m['embeddings'] / 1e6:.0f} MB | {m['ann'] / 1e6:.0f} MB | {m['bm25'] / 1e6:.0f} MB | "
                     f"{m['rows'] / 1e6:.0f} MB | {sum(m.values()) / n:,.0f} | {h['server_rss_mb_after']:,.0f} |")
    L.append("")
    (RESULTS / "search_latency.md").write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
