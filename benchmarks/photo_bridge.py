"""Photo bridge: how well does the image->text projection alone find products for a text query?

One command (about a minute; needs an encoded fashion44k store)::

    nice -n 15 .venv/bin/python benchmarks/photo_bridge.py
    .venv/bin/python benchmarks/photo_bridge.py --home ~/.cache/fusionrank --fields title

On the fashion44k dev queries (500) against the full catalogue (44,072 products), each
query is ranked by one score only, and the top ``--depth`` (1000) products per query are
evaluated with :func:`fusionrank.metrics.evaluate` (trec_eval conventions):

* **photo projection**: cosine(query MiniLM embedding, ``image_proj.<title_field>``), the
  product photo's EfficientNet-Lite0 features mapped into the MiniLM text space by the
  :class:`~fusionrank.encoders.ImageTextProjection` trained on the catalogue's own
  (title, photo) pairs (one projection per title field). Products without a projected
  photo are not ranked;
* **random** (the baseline): seeded uniform random scores over the whole catalogue; the
  analytic expectation of a random ranking is printed beside it as a check
  (recall@100 = 100 / catalogue size; E[DCG@10] = mean gain per product x sum of the
  discounts);
* **dense title** (context): cosine(query, MiniLM embedding of the ``<title_field>``).

Metrics: ``recall(rel_level=3)@100`` (share of a query's grade-3 products, those matching
every attribute the query names, that are in the top 100) and ``ndcg@10`` (gain 2^g - 1
over grades 0-3). Ratios are to the seeded random ranking of the same run.

Data: the catalogue written by ``fusionrank ingest`` at ``<home>/fashion44k-full/catalog``
and the store of ``fusionrank encode`` at ``<home>/fashion44k-full/store`` (``--home``,
default ``FUSIONRANK_HOME``, else ``~/.cache/fusionrank``; ``--name`` for another catalogue).
The catalogue side is the ranking path's frozen tables, ``CatalogTables.from_store(products,
store, CatalogConfig(title_field=...))``, and queries are encoded by its ``QueryEncoder``.
Writes ``benchmarks/results/photo_bridge.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from fusionrank import schema as S  # noqa: E402
from fusionrank.ingest import Catalog  # noqa: E402
from fusionrank.metrics import evaluate  # noqa: E402
from fusionrank.ranking import CatalogConfig, CatalogTables, QueryEncoder, VectorConfig  # noqa: E402
from fusionrank.settings import get_settings  # noqa: E402
from fusionrank.store import EmbeddingStore  # noqa: E402

RECALL = "recall(rel_level=3)@100"
NDCG = "ndcg@10"
METRICS = (RECALL, NDCG)
SUB_RECALL = "recall(rel_level=3)@10"
SUB_METRICS = (SUB_RECALL, NDCG)


def top_run(scores: np.ndarray, valid: np.ndarray, ids: np.ndarray, qids: list[str], depth: int) -> pd.DataFrame:
    """Top ``depth`` products per query (row of ``scores``) as a run DataFrame."""
    s = np.where(valid[None, :], scores, -np.inf)
    k = min(depth, int(valid.sum()))
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(s, part, 1)
    order = np.argsort(-ps, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, 1)
    sc = np.take_along_axis(ps, order, 1)
    assert np.isfinite(sc).all()
    return pd.DataFrame({S.QUERY_ID: np.repeat(np.asarray(qids, dtype=object), k), S.PRODUCT_ID: ids[rows].ravel(),
                         S.SCORE: sc.ravel().astype(np.float64)})


def expected_random(qrels: pd.DataFrame, n_products: int) -> dict[str, float]:
    """Expectation of the metrics for a uniformly random ranking of ``n_products`` products."""
    disc = 1.0 / np.log2(np.arange(2, 12))  # ranks 1..10
    rec, nd = [], []
    for _, g in qrels.groupby(S.QUERY_ID):
        grades = g[S.GRADE].to_numpy()
        rec.append(min(100, n_products) / n_products if (grades >= 3).any() else 0.0)
        gains = 2.0 ** grades - 1
        ideal = np.sort(gains)[::-1][:10]
        idcg = float((ideal * disc[:len(ideal)]).sum())
        nd.append(gains.sum() / n_products * disc.sum() / idcg if idcg > 0 else 0.0)
    return {RECALL: float(np.mean(rec)), NDCG: float(np.mean(nd))}


def projection_split(products: pd.DataFrame, store: EmbeddingStore, title_field: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Catalogue rows the projection held out from training, and rows it trained on.

    Reproduces the split of :meth:`ImageTextProjection.fit` as called by ``Encoding.projection``
    (pairs = products with both a photo feature and a title embedding, in catalogue order;
    ``default_rng(seed).permutation`` first ``valid_fraction`` = 5% held out) and checks it by
    recomputing the stored held-out photo->own-title recall@10. Returns empty arrays if the
    check fails.
    """
    import torch
    import torch.nn.functional as F

    from fusionrank.encoders import Encoder

    d = store.root / "models" / f"image_projection.{title_field}"
    proj = Encoder.load(d)
    if getattr(proj, "cross_fitted", False):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), ("cross-fitted projection: no photo was projected by a model that saw "
                                                              "its title (held-out check: benchmarks/crossfit_projection.py)")
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    X, xm = store.matrix("image.efficientnet_lite0", ids)
    T, tm = store.matrix(f"{title_field}.minilm", ids)
    pair_rows = np.flatnonzero(xm & tm)
    n = len(pair_rows)
    perm = np.random.default_rng(proj.seed).permutation(n)
    nv = int(n * 0.05) if n >= 200 else 0
    held, seen = pair_rows[perm[:nv]], pair_rows[perm[nv:]]
    if not nv or not proj.history_:
        return held[:0], seen[:0], "no held-out split recorded"
    Xn = torch.from_numpy((X[held] - proj.mean_) / proj.std_)
    Tt = F.normalize(torch.from_numpy(T[held]), dim=1)
    got = proj._retrieval_recall(proj.model_, Xn, Tt)
    want = proj.history_[-1].get("valid_recall@10", float("nan"))
    Xs = torch.from_numpy((X[seen[:nv]] - proj.mean_) / proj.std_)
    seen_r = proj._retrieval_recall(proj.model_, Xs, F.normalize(torch.from_numpy(T[seen[:nv]]), dim=1))
    msg = (f"photo->own-title recall@10 among {nv:,} photos: held-out {got:.3f} (training history: {want:.3f}), "
           f"{nv:,} training photos {seen_r:.3f}")
    if abs(got - want) > 1e-4:
        return held[:0], seen[:0], "could not reproduce the held-out split: " + msg
    return held, seen, msg


def subset_eval(idx: CatalogTables, rows: np.ndarray, q_emb: np.ndarray, qids: list[str], qrels: pd.DataFrame,
                rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Rank only the catalogue rows ``rows``; queries with a grade-3 product among them."""
    ids = idx.ids[rows]
    qr = qrels[qrels[S.PRODUCT_ID].isin(set(ids))]
    keep = set(qr.loc[qr[S.GRADE] >= 3, S.QUERY_ID])
    qr = qr[qr[S.QUERY_ID].isin(keep)]
    qsel = [i for i, qid in enumerate(qids) if qid in keep]
    qs = [qids[i] for i in qsel]
    out = {}
    valid = np.ones(len(rows), bool)
    for label, emb in (("photo projection", "image_proj"), ("dense title (MiniLM)", "title")):
        sc = q_emb[qsel] @ idx.emb[emb][rows].T
        out[label] = evaluate(qr, top_run(sc, idx.emb_mask[emb][rows], ids, qs, 100), SUB_METRICS).mean
    out["random (seeded)"] = evaluate(qr, top_run(rng.random((len(qs), len(rows)), dtype=np.float32), valid, ids, qs, 100),
                                      SUB_METRICS).mean
    out["_queries"] = {"n": float(len(qs))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=get_settings().home, help="fusionrank home (default: %(default)s)")
    ap.add_argument("--name", default="fashion44k-full", help="catalogue folder under --home (default: %(default)s)")
    ap.add_argument("--fields", default="title,title_sparse", help="title fields, comma-separated (default: %(default)s)")
    ap.add_argument("--split", default="dev", help="query split (default: %(default)s)")
    ap.add_argument("--depth", type=int, default=1000, help="products ranked per query (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random ranking (default: %(default)s)")
    ap.add_argument("--seen-samples", type=int, default=3,
                    help="samples of training products compared with the held-out ones (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "photo_bridge.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args(argv)

    def log(m: str) -> None:
        print(m, flush=True)

    t_start = time.perf_counter()
    base = a.home / a.name
    cat = Catalog.load(base / "catalog")
    store = EmbeddingStore(base / "store")
    q = cat.queries
    if "split" in q.columns:
        q = q[q["split"] == a.split]
    q = q.sort_values(S.QUERY_ID).reset_index(drop=True)
    qids, texts = q[S.QUERY_ID].astype(str).tolist(), q[S.QUERY].astype(str).tolist()
    qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(qids))].reset_index(drop=True)
    n_prod = len(cat.products)
    log(f"{len(qids)} {a.split} queries, {len(qrels):,} judgments ({int((qrels[S.GRADE] >= 3).sum()):,} grade 3), "
        f"{n_prod:,} products")

    rng = np.random.default_rng(a.seed)
    all_ids = cat.products[S.PRODUCT_ID].astype(str).to_numpy(dtype=object)
    rand_run = top_run(rng.random((len(qids), n_prod), dtype=np.float32), np.ones(n_prod, bool), all_ids, qids, a.depth)
    rand = evaluate(qrels, rand_run, METRICS).mean
    expect = expected_random(qrels, n_prod)
    log(f"random (seed {a.seed}): {rand}; expected {expect}")

    rows: list[dict] = []
    sub_rows: list[dict] = []
    split_msgs: dict[str, str] = {}
    q_emb = None
    coverage = {}
    for tf in [f.strip() for f in a.fields.split(",") if f.strip()]:
        t0 = time.perf_counter()
        idx = CatalogTables.from_store(cat.products, store, CatalogConfig(title_field=tf, ann=VectorConfig(codec="exact")),
                                       log=log)
        if q_emb is None:
            q_emb = QueryEncoder().encode_many(texts)  # the same MiniLM for every title field
        pm = idx.emb_mask["image_proj"]
        coverage[tf] = int(pm.sum())
        if not pm.any():
            log(f"{tf}: no image_proj.{tf} in {store.root}; skipped")
            continue
        res = {"random (seeded)": rand, "random (expected)": expect}
        for label, emb in (("photo projection", "image_proj"), ("dense title (MiniLM)", "title")):
            run = top_run(q_emb @ idx.emb[emb].T, idx.emb_mask[emb], idx.ids, qids, a.depth)
            res[label] = evaluate(qrels, run, METRICS).mean
        for label, m in res.items():
            rows.append({"title field": tf, "ranking": label, **m})
        held, seen, msg = projection_split(cat.products, store, tf)
        log(f"{tf}: {msg}")
        split_msgs[tf] = msg
        if len(held):
            srng = np.random.default_rng(a.seed + 1)
            h = subset_eval(idx, held, q_emb, qids, qrels, srng)
            ss = [subset_eval(idx, np.sort(srng.choice(seen, size=len(held), replace=False)), q_emb, qids, qrels, srng)
                  for _ in range(a.seen_samples)]
            for part, vals in (("held out from projection training", [h]), (f"seen in training (mean of {len(ss)} samples)", ss)):
                for label in ("photo projection", "dense title (MiniLM)", "random (seeded)"):
                    sub_rows.append({"title field": tf, "products": f"{len(held):,} {part}", "ranking": label,
                                     "queries": np.mean([v["_queries"]["n"] for v in vals]),
                                     **{m: float(np.mean([v[label][m] for v in vals])) for m in SUB_METRICS}})
        log(f"{tf}: " + "; ".join(f"{k}: recall {v[RECALL]:.4f} ndcg {v[NDCG]:.4f}" for k, v in res.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
        del idx

    lines = [f"| title field | ranking | {RECALL} | / random | {NDCG} | / random |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        rr = "1 (ref)" if r["ranking"] == "random (seeded)" else f"{r[RECALL] / rand[RECALL]:.1f}"
        rn = "1 (ref)" if r["ranking"] == "random (seeded)" else f"{r[NDCG] / rand[NDCG]:.1f}"
        lines.append(f"| {r['title field']} | {r['ranking']} | {r[RECALL]:.4f} | {rr} | {r[NDCG]:.4f} | {rn} |")
    tab = "\n".join(lines)
    sub_tab = ""
    if sub_rows:
        sl = [f"| title field | products ranked | queries | ranking | {SUB_RECALL} | {NDCG} | photo / dense title ({NDCG}) |",
              "|---|---|---:|---|---:|---:|---:|"]
        for r in sub_rows:
            ratio = ""
            if r["ranking"] == "photo projection":
                dense = next(x for x in sub_rows if x["title field"] == r["title field"] and x["products"] == r["products"]
                             and x["ranking"] == "dense title (MiniLM)")
                ratio = f"{r[NDCG] / dense[NDCG]:.2f}"
            sl.append(f"| {r['title field']} | {r['products']} | {r['queries']:.0f} | {r['ranking']} | {r[SUB_RECALL]:.4f} | "
                      f"{r[NDCG]:.4f} | {ratio} |")
        sub_tab = "\n".join(sl)
    total = time.perf_counter() - t_start
    print()
    print(tab)
    if sub_tab:
        print()
        print(sub_tab)
    cmd = "".join(" " + x for x in (argv if argv is not None else sys.argv[1:]))
    header = (f"`nice -n 15 python benchmarks/photo_bridge.py{cmd}` on {platform.machine()} with {os.cpu_count()} cores, "
              f"{date.today().isoformat()}; whole run {total:.0f} s.\n\n"
              f"{len(qids)} fashion44k {a.split} queries, {len(qrels):,} judgments "
              f"({int((qrels[S.GRADE] >= 3).sum()):,} of grade 3), full catalogue of {n_prod:,} products; "
              f"top {a.depth} per query; products with a projected photo: "
              + ", ".join(f"{k} {v:,}" for k, v in coverage.items()) + ".")
    notes = ("Each ranking uses one score only: *photo projection* = cosine(query MiniLM, `image_proj.<title field>`: the "
             "photo's EfficientNet-Lite0 features mapped into MiniLM space by the projection trained on that title field); "
             "*dense title* = cosine(query MiniLM, MiniLM of the title field), for context; *random (seeded)* = uniform "
             f"random scores (seed {a.seed}), the reference of the ratios; *random (expected)* = the analytic expectation "
             "of a random ranking, a check on the evaluation. Metrics from `fusionrank.metrics.evaluate` (trec_eval "
             f"conventions, gain 2^g - 1): `{RECALL}` = share of a query's grade-3 products in the top 100; `{NDCG}`. "
             "The seeded random run is one draw with only a few dozen grade-3 hits in the top 100 over all queries, so its "
             "recall (the denominator of the ratios) is noisy; compare with the expected row.")
    if not a.no_write:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        body = "# Photo bridge: text query -> product photo through the image->text projection\n\n" + header + "\n\n" + tab
        body += "\n\n" + notes + "\n"
        if sub_tab:
            body += ("\n## Held-out check: photos the projection was not trained on\n\n"
                     "The projection is trained on the catalogue's own (title, photo) pairs, all but a 5% held-out share, so "
                     "for 95% of the products above it has seen the photo together with the product's own title. "
                     + " ".join(f"{k}: {v}." for k, v in split_msgs.items())
                     + " Below, each query ranks only a 5% slice of the catalogue: the products held out from projection "
                     "training, or an equally large random sample of training products; queries with no grade-3 product in the "
                     f"slice are left out; `{SUB_RECALL}` (top 10 of ~2,200 is about the same share as top 100 of 44,072).\n\n"
                     + sub_tab + "\n")
        a.out.write_text(body)
        log(f"wrote {a.out}")
    log(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
