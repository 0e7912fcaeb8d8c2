"""BM25's candidate stage over a big catalogue: scoring and the top rows, against a plain exact top-k, one run.

    python benchmarks/bm25_topk.py [--index DIR] [--queries 500] [--depth 200] [--stem bm25_topk]

Loads each BM25 field of a saved index (``DIR/lex.<field>``; default the 1M products of ``benchmarks/workers.py
--copies 23``), scores distinct fashion44k train and dev queries with ``LexicalField.score`` and takes the top
``depth`` rows by score, ties to the lower row, as the retriever does (``LexScores.top_scored``).

Baselines from the same run, over the same score arrays, each checked to give the same rows in the same order:

* *plain exact top-k*: every matching row of the dense accumulator, the cut found by ``argpartition``, then a sort,
  as one would write it without the sampled threshold;
* *sample with its zeros*: the sampled threshold chosen over the whole sample, zeros included (fusionrank's code
  before commit 682ac2f: numpy's partition is slow over many equal values).

One thread (``OMP_NUM_THREADS=1``). Writes ``benchmarks/results/STEM.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import HOME, log, machine, queries, report  # noqa: E402

from fusionrank.ranking.vectors import ranked_scored  # noqa: E402


def plain_top(a: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``depth`` of a dense accumulator by score then lower row: the matching rows, the ``depth``-th best
    score by ``argpartition``, then every row at or above it sorted."""
    rows = np.flatnonzero(a)
    if len(rows) > depth:
        s = a[rows]
        kth = s[np.argpartition(-s, depth - 1)[:depth]].min()
        rows = rows[s >= kth]
    o = np.lexsort((rows, -a[rows]))[:depth]
    return rows[o], a[rows[o]]


def zeros_sample_top(a: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The top rows with the threshold chosen over the whole sample, zeros included (the code before 682ac2f)."""
    cand = None
    if len(a) > 64 * depth:
        samp = a[::32]
        kk = min(len(samp) - 1, 4 * depth // 32 + 1)
        t = np.partition(samp, len(samp) - 1 - kk)[len(samp) - 1 - kk]
        if t > 0:
            c = np.flatnonzero(a >= t)
            if len(c) >= depth:
                cand = c
    if cand is None:
        cand = np.flatnonzero(a)
    return ranked_scored(cand, a[cand], depth)  # the last step, as then


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, default=HOME / "scale-workers-demo44k" / "model-float16-23x" / "index")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--depth", type=int, default=200)
    ap.add_argument("--stem", default="bm25_topk")
    a = ap.parse_args()
    from fusionrank.modalities import LEXICAL_FIELDS
    from fusionrank.ranking.lexical import LexicalField

    fields = {f: LexicalField.load(a.index / f"lex.{f}") for f in LEXICAL_FIELDS if (a.index / f"lex.{f}").exists()}
    if not fields:
        raise SystemExit(f"{a.index}: no BM25 field (lex.<field>) here; build the 1M index with "
                         "`benchmarks/workers.py --copies 23` or pass --index")
    qs = queries(a.queries)
    res = {"index": str(a.index), "queries": len(qs), "depth": a.depth, "machine": machine(), "fields": {},
           "command": " ".join(["python benchmarks/bm25_topk.py", *sys.argv[1:]])}
    for name, f in fields.items():
        terms = [f.query_terms(q) for q in qs]
        f.score(f.query_terms("shirt"))  # the posting weights, cached at the first query
        ms = {"score": 0.0, "top": 0.0, "plain": 0.0, "old": 0.0}
        dense, matching, same = 0, [], True
        for t in terms:  # one query at a time, its arrays dropped before the next, as a search does
            t0 = time.perf_counter()
            sc = f.score(t)
            ms["score"] += time.perf_counter() - t0
            if sc.dense is None:
                continue
            dense += 1
            matching.append(np.count_nonzero(sc.dense))
            got = {}
            for k, fn in (("top", sc.top_scored), ("plain", lambda d: plain_top(sc.dense, d)),
                          ("old", lambda d: zeros_sample_top(sc.dense, d))):
                t0 = time.perf_counter()
                got[k] = fn(a.depth)
                ms[k] += time.perf_counter() - t0
            same &= all(np.array_equal(got["top"][i], got[k][i]) for k in ("plain", "old") for i in (0, 1))
        if not same:
            raise SystemExit(f"{name}: the top rows differ between the methods")
        score_ms = ms["score"] / len(terms) * 1e3
        ours_ms, plain_ms, old_ms = (ms[k] / max(1, dense) * 1e3 for k in ("top", "plain", "old"))
        res["fields"][name] = {"rows": f.n_rows, "dense_queries": dense, "score_ms": score_ms, "top_ms": ours_ms,
                               "plain_top_ms": plain_ms, "zeros_sample_top_ms": old_ms, "same_rows": same,
                               "matching_rows_mean": float(np.mean(matching)) if matching else 0.0}
        log(f"{name}: score {score_ms:.2f} ms, top {ours_ms:.2f} / plain {plain_ms:.2f} / zeros sample {old_ms:.2f} ms")
    lines = [f"# BM25's top {a.depth} rows over {next(iter(fields.values())).n_rows:,} products (one run)", "",
             f"`{res['command']}`; index `{res['index']}`; {len(qs)} distinct fashion44k train and dev queries; one "
             "thread. Per query and field, mean ms. *Top*: fusionrank's `LexScores.top_scored` (a threshold from a "
             "sample of the matching rows); *plain exact top-k*: argpartition over every matching row; *sample with "
             "its zeros*: the threshold chosen over the whole sample (the code before). The queries whose postings "
             "fill a dense accumulator are timed; all three gave the same rows in the same order.", "",
             "| field | rows | dense queries | matching rows (mean) | scoring ms (every query) | top ms | plain exact top-k ms | "
             "ratio | sample with its zeros ms | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["fields"].items():
        lines.append(f"| {name} | {r['rows']:,} | {r['dense_queries']} | {r['matching_rows_mean']:,.0f} | "
                     f"{r['score_ms']:.2f} | {r['top_ms']:.2f} | {r['plain_top_ms']:.2f} | "
                     f"{r['plain_top_ms'] / r['top_ms']:.1f}x | {r['zeros_sample_top_ms']:.2f} | "
                     f"{r['zeros_sample_top_ms'] / r['top_ms']:.1f}x |")
    report(a.stem, res, lines)


if __name__ == "__main__":
    main()
