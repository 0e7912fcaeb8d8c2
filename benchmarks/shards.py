"""Index shards against one index at about 1M products: candidate-stage latency and candidate recall.

    python benchmarks/shards.py [--copies 23] [--shards 2,4] [--queries 200] [--no-ray]

The catalogue is fashion44k's products (real titles and descriptions, real MiniLM title vectors from
the workspace's embedding store) replicated ``--copies`` times, as ``benchmarks/table_memory.py``
makes its 1M products: records and texts repeated, each copy's vectors perturbed (Gaussian, sigma
0.02 per dimension) and re-normalised, float16. The photo and transcript tables are synthetic here
(the store's image feature was being written by another job during this run): every product gets a
photo vector, 30% a transcript vector, each its title vector perturbed (sigma 0.05) and re-normalised.
The index is the service's (``SearchIndex.build``, IVF-SQ8 over the three dense sources, the default
candidate stage: BM25 on two fields and three vector sources, top 200 each, RRF to 200).

For K in ``--shards``: the index is split into K shards (:func:`fusionrank.serving.shards.split`: the
rows ``r % K``, the same term ids and trained IVF), and the candidate stage of each query (one at a
time, real fashion44k queries encoded by the service's query encoder) runs

- over the one index (:class:`HybridRetriever`),
- over the K shards in this process, one after another (:class:`ShardRouter` over :class:`Shard`s: the
  total work of the shards plus the merge),
- over the K shards as Ray actors, in parallel (:class:`RayShard`; each loads its saved shard).

Candidate recall against the one index (share of its candidates the router returns) and the share of
queries whose candidates are identical (rows, order, fused scores) are checked on every query.

With ``--model`` (default: the model folder of ``benchmarks/ray_serve.py``, a neural ranker over the title
and photo tables), the end-to-end arm: each query through ``RankingPipeline.search`` (top 10, no
explanations) over the one index and over the shards (``RankingPipeline.over_shards``: candidates, then
each shard's candidates' inputs gathered into a candidate-only view, then the same feature builder and
ranker). Timed: retrieve + features + rank (the stage timings; query encoding, cached, left out). Checked:
the share of queries whose top 10 and every candidate's ranker score are identical to the one index's;
reported: the view's size (candidates' rows and embedding bytes the router held per query).
Writes benchmarks/results/shards.md (+ .json), with the machine's load before and after.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from event_logging import machine_load  # noqa: E402
from fusionrank.settings import get_settings  # noqa: E402

HOME = get_settings().home


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def pct(xs, p) -> float:
    return float(np.percentile(np.asarray(xs), p))


def catalogue(workspace: Path, copies: int, sigma: float, log=log):
    """Columns, BM25 texts, float16 tables and masks of ``copies`` perturbed copies of the workspace's products."""
    import pandas as pd

    from fusionrank import schema as S
    from fusionrank.encode import indexed_titles
    from fusionrank.ranking.catalog import INDEXED_TITLE, RECORD_COLUMNS, TRANSCRIPT_TEXT, lexical_texts
    from fusionrank.store import EmbeddingStore

    p = pd.read_parquet(workspace / "catalog" / S.CATALOG_PRODUCTS_FILE).reset_index(drop=True)
    ids = p[S.PRODUCT_ID].astype(str).tolist()
    title, has = EmbeddingStore(workspace / "store").matrix("title.minilm", ids)
    p, title = p[has].reset_index(drop=True), title[has]
    ids = p[S.PRODUCT_ID].astype(str).tolist()
    n = len(p)
    rng = np.random.default_rng(0)

    def col(c):
        return p[c].astype(object).where(p[c].notna(), None).to_numpy(object) if c in p.columns else np.full(n, None, object)

    titles = indexed_titles(p, S.TITLE)
    desc = [d if isinstance(d, str) else "" for d in col(S.DESCRIPTION)]
    base_rec = {c: col(c) for c in RECORD_COLUMNS}
    base_rec[INDEXED_TITLE] = np.asarray(titles, object)
    base_rec[TRANSCRIPT_TEXT] = np.full(n, None, object)
    base_txt = lexical_texts(titles, desc, [None] * n)
    records = {c: np.tile(v, copies) for c, v in base_rec.items()}
    records[S.PRODUCT_ID] = np.asarray([pid if j == 0 else f"{pid}~{j}" for j in range(copies) for pid in ids], object)
    texts = {f: np.tile(np.asarray(v, object), copies) for f, v in base_txt.items()}

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)

    def noisy(a, s):
        return unit(a + rng.normal(0, s, a.shape).astype(np.float32))

    base = {"title": unit(title.astype(np.float32)), "image_proj": noisy(title, 0.05), "transcript": noisy(title, 0.05)}
    masks0 = {"title": np.ones(n, bool), "image_proj": np.ones(n, bool), "transcript": rng.random(n) < 0.3}
    emb, mask = {}, {}
    P = n * copies
    for t, e0 in base.items():
        e = np.zeros((P, e0.shape[1]), np.float16)
        for j in range(copies):
            e[j * n:(j + 1) * n] = e0 if j == 0 else noisy(e0, sigma)
        m = np.tile(masks0[t], copies)
        e[~m] = 0
        emb[t], mask[t] = e, m
    log(f"  {P:,} products ({n:,} x {copies}); vectors: " + ", ".join(f"{t} {int(m.sum()):,}" for t, m in mask.items()))
    return records, texts, emb, mask


def encoded_queries(n: int):
    import pandas as pd

    from fusionrank.ranking import Queries, QueryEncoder

    d = get_settings().fashion44k_dir
    qs = pd.concat([pd.read_csv(d / "queries_dev.tsv", sep="\t"), pd.read_csv(d / "queries_train.tsv", sep="\t")])["query"]
    texts = list(dict.fromkeys(qs.astype(str)))[:n]
    return QueryEncoder(threads=1).transform(Queries.of(texts))


def one_at_a_time(stage, queries) -> tuple[list, list[float]]:
    """Each query alone through ``stage`` (its candidates and wall time in ms); one warm-up query first."""
    from fusionrank.ranking import Queries

    def single(i):
        return Queries([queries.query_ids[i]], [queries.texts[i]], queries.q[i:i + 1], queries.category)

    stage.transform(single(0))
    out, ms = [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        c = stage.transform(single(i))
        ms.append((time.perf_counter() - t0) * 1e3)
        out.append(c)
    return out, ms


def compare(got: list, want: list) -> dict:
    """Candidate recall against ``want`` and the share of queries whose candidates are identical (rows, order, scores)."""
    rec, same = [], 0
    for g, w in zip(got, want):
        gr, wr = g.rows[0], w.rows[0]
        rec.append(len(np.intersect1d(gr, wr)) / len(wr) if len(wr) else 1.0)
        same += bool(np.array_equal(gr, wr) and np.array_equal(g.scores[0], w.scores[0]))
    return {"recall_mean": float(np.mean(rec)), "recall_min": float(np.min(rec)), "identical_share": same / len(want)}


RANKED_STAGES = ("retrieve", "features", "rank")


def ranked_one_at_a_time(pipe, texts: list[str]) -> tuple[list, list[float]]:
    """Each query alone through ``pipe.search`` (top 10, no explanations); one warm-up query first."""
    pipe.search(texts[0], 10, explain=False)
    out, ms = [], []
    for t in texts:
        r = pipe.search(t, 10, explain=False)
        ms.append(sum(r.timings_ms[f"{s}_ms"] for s in RANKED_STAGES))
        out.append(r)
    return out, ms


def compare_ranked(got: list, want: list) -> dict:
    """Share of queries with the same top 10 and the same ranker score for every candidate; the view's size."""
    same = sum(bool([h["product_id"] for h in g.hits] == [h["product_id"] for h in w.hits]
                    and np.array_equal(g.scored.scores, w.scored.scores)) for g, w in zip(got, want))
    views = [g.candidates.catalog for g in got]
    return {"identical_ranking_share": same / len(want), "view_rows_mean": float(np.mean([v.n_rows for v in views])),
            "view_embedding_kb_mean": float(np.mean([v.memory_bytes()["embeddings"] for v in views])) / 1024}


def summary(ms: list[float]) -> dict:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(np.mean(ms))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, default=HOME / "fashion44k-full-91b43b5930e4")
    ap.add_argument("--copies", type=int, default=23)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--shards", default="2,4")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--work", type=Path, default=HOME / "bench-shards")
    ap.add_argument("--out", default="shards")
    ap.add_argument("--model", type=Path, default=HOME / "bench-rayserve" / "model",
                    help="a model folder for the end-to-end arm ('' to skip it)")
    a = ap.parse_args()
    from fusionrank.ranking import CatalogConfig, HybridRetriever, QueryEncoder, RankingPipeline
    from fusionrank.serving.index import SearchIndex
    from fusionrank.serving.shards import RayShard, ShardRouter, split

    t_start = time.time()
    res = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_before": machine_load(), "copies": a.copies, "sigma": a.sigma}
    log(res["load_before"])
    log("queries")
    queries = encoded_queries(a.queries)
    res["queries"] = len(queries)
    log(f"catalogue: fashion44k x {a.copies}")
    records, texts, emb, mask = catalogue(a.workspace, a.copies, a.sigma)
    cfg = CatalogConfig(table_dtype="float16")
    t0 = time.perf_counter()
    index = SearchIndex.build(records, texts, emb, mask, cfg, log=lambda m: log("  " + m))
    res["build_seconds"] = time.perf_counter() - t0
    del records, texts, emb, mask
    gc.collect()
    res["products"] = len(index)
    res["config"] = cfg.model_dump(mode="json")
    res["nlist"] = {t: v.nlist for t, v in index.vectors.items()}
    log(f"one index: {len(index):,} products, built in {res['build_seconds']:.0f} s; searching")
    want, ms = one_at_a_time(HybridRetriever(index), queries)
    res["one index"] = summary(ms)
    log(f"  one index: p50 {res['one index']['p50_ms']:.1f} ms, p99 {res['one index']['p99_ms']:.1f} ms")
    ranker = enc = want_ranked = None
    texts = list(queries.texts)
    if str(a.model) not in ("", "."):
        from fusionrank.serving import load_handle

        ranker, enc = load_handle(a.model).ranker, QueryEncoder(threads=1)
        res["model"] = str(a.model)
        enc.encode_many(texts)  # every query in the encoder's cache: the timed stages exclude encoding anyway
        want_ranked, ms = ranked_one_at_a_time(RankingPipeline.over(index, ranker, enc), texts)
        res["one index, ranked"] = summary(ms)
        log(f"  one index, ranked: {res['one index, ranked']}")
    runs = []
    for k in [int(x) for x in a.shards.split(",")]:
        t0 = time.perf_counter()
        shards = split(index, k, log=lambda m: None)
        r = {"shards": k, "split_seconds": time.perf_counter() - t0, "products_per_shard": [len(s.tables) for s in shards]}
        log(f"K={k}: split in {r['split_seconds']:.0f} s; in-process router")
        got, ms = one_at_a_time(ShardRouter(shards), queries)
        r["in-process (shards one after another)"] = {**summary(ms), **compare(got, want)}
        log(f"  in-process: {r['in-process (shards one after another)']}")
        if ranker is not None:
            got_r, ms = ranked_one_at_a_time(RankingPipeline.over_shards(ShardRouter(shards), ranker, enc), texts)
            r["ranked, in-process"] = {**summary(ms), **compare_ranked(got_r, want_ranked)}
            log(f"  ranked, in-process: {r['ranked, in-process']}")
            del got_r
        if not a.no_ray:
            import ray

            dirs = []
            t0 = time.perf_counter()
            for i, s in enumerate(shards):
                d = a.work / f"k{k}" / f"shard{i}"
                shutil.rmtree(d, ignore_errors=True)
                dirs.append(s.save(d))
            r["save_seconds"] = time.perf_counter() - t0
            del shards, got
            gc.collect()
            if not ray.is_initialized():
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                                   "PYTHONPATH": str(ROOT / "src")}})
            t0 = time.perf_counter()
            actors = [RayShard(d) for d in dirs]
            for s in actors:
                s.ready()
            r["actors_ready_seconds"] = time.perf_counter() - t0
            got, ms = one_at_a_time(ShardRouter(actors, index.config.candidates), queries)
            r["Ray actors (in parallel)"] = {**summary(ms), **compare(got, want)}
            log(f"  Ray actors: {r['Ray actors (in parallel)']}")
            if ranker is not None:
                router = ShardRouter(actors, index.config.candidates)
                got_r, ms = ranked_one_at_a_time(RankingPipeline.over_shards(router, ranker, enc), texts)
                r["ranked, Ray actors"] = {**summary(ms), **compare_ranked(got_r, want_ranked)}
                log(f"  ranked, Ray actors: {r['ranked, Ray actors']}")
                del got_r
            for s in actors:
                s.close()
            shutil.rmtree(a.work / f"k{k}", ignore_errors=True)
        else:
            del shards
        gc.collect()
        runs.append(r)
    res["runs"] = runs
    res["load_after"] = machine_load()
    res["seconds"] = time.time() - t_start
    log(res["load_after"])
    write(res, a.out)


def write(res: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2))
    one = res["one index"]
    what = "candidate stage and end-to-end search" if "one index, ranked" in res else "candidate stage"
    lines = [f"# Index shards against one index: {what} at {res['products']:,} products",
             "",
             f"Command: `{res['command']}` ({res['started']}, {res['seconds'] / 60:.0f} min in all). "
             f"{res['queries']} fashion44k queries, one at a time, candidate stage only (BM25 on two fields + IVF-SQ8 on "
             f"three tables, top 200 each, RRF to 200; nlist {res['nlist']}, nprobe {res['config']['ann']['nprobe']}). "
             f"Catalogue: fashion44k x {res['copies']} (synthetic copies, see the script's docstring). One index built in "
             f"{res['build_seconds']:.0f} s. OpenMP/MKL 1 thread, `nice -n 10`, a 2-core machine shared with other jobs.",
             "",
             "| setup | p50 ms | p99 ms | mean ms | candidate recall (mean / min) | identical candidates (rows, order, scores) |",
             "|---|---|---|---|---|---|",
             f"| one index | {one['p50_ms']:.1f} | {one['p99_ms']:.1f} | {one['mean_ms']:.1f} | 1 (reference) | |"]
    for r in res["runs"]:
        for kind in ("in-process (shards one after another)", "Ray actors (in parallel)"):
            if kind in r:
                x = r[kind]
                lines.append(f"| K={r['shards']}, {kind} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['mean_ms']:.1f} | "
                             f"{x['recall_mean']:.4f} / {x['recall_min']:.4f} | {100 * x['identical_share']:.1f}% of queries |")
    if "one index, ranked" in res:
        one = res["one index, ranked"]
        lines += ["", f"End to end (`RankingPipeline.search`, top 10, no explanations; model `{res['model']}`): "
                      "retrieve + features + rank per query, one at a time; over shards the features and the ranker "
                      "read a candidate-only view gathered from the shards.",
                  "",
                  "| setup | p50 ms | p99 ms | mean ms | identical top 10 and candidate scores | view: rows / embeddings per query |",
                  "|---|---|---|---|---|---|",
                  f"| one index | {one['p50_ms']:.1f} | {one['p99_ms']:.1f} | {one['mean_ms']:.1f} | (reference) | |"]
        for r in res["runs"]:
            for kind in ("ranked, in-process", "ranked, Ray actors"):
                if kind in r:
                    x = r[kind]
                    lines.append(f"| K={r['shards']}, {kind.split(', ')[1]} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
                                 f"{x['mean_ms']:.1f} | {100 * x['identical_ranking_share']:.1f}% of queries | "
                                 f"{x['view_rows_mean']:.0f} rows / {x['view_embedding_kb_mean']:.0f} kB |")
    if res.get("reading"):
        lines += ["", "Reading: " + res["reading"]]
    lines += ["", "Split: " + "; ".join(f"K={r['shards']} in {r['split_seconds']:.0f} s ({', '.join(f'{n:,}' for n in r['products_per_shard'])} products)"
                                        for r in res["runs"]),
              "", "Machine load:", "", f"- before: {res['load_before']}", f"- after: {res['load_after']}", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    log(f"wrote {RESULTS / (name + '.md')}")


if __name__ == "__main__":
    main()
