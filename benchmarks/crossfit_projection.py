"""Honest photo features: photo-only ranking on products the projection never saw, against products it trained on.

One command (needs an encoded fashion44k store: ``fusionrank train`` or ``fusionrank encode`` with photos)::

    nice -n 10 .venv/bin/python benchmarks/crossfit_projection.py [--fields title,title_sparse] [--folds 5]

The image->text projection is trained on the catalogue's own (title, photo) pairs and then
projects those same photos. A single projection has learned each catalogue photo next to its own
title, so catalogue photos look better than the photo of a product added later. Cross-fitting
(``[encoders.projection] args = { folds = K }``) projects each photo with the model of its
title's fold (:func:`fusionrank.encoders.fold_of`), one that never saw that title.

In one run, per title field:

1. A held-out set H: the products whose title falls in fold 0 of 20 (about 5%; products with
   the same title stay together, as with a new product whose title the catalogue has). H is left
   out of every projection trained below: they stand for products added after training.
2. **single**: one projection trained on every other pair (today's default, ``folds = 1``).
3. **cross-fitted**: K projections on the same pairs, each without its fold; a seen product's
   photo is projected by its fold's model, a held-out product's by the model of its title's fold
   (exactly what ``PUT /products`` does).
4. Photo-only ranking (cosine of the query's MiniLM embedding and the projected photo) of the
   500 dev queries over H, and over equally large random samples of the seen products (mean of
   ``--seen-samples``); queries with no grade-3 product in the slice are left out. The gap
   seen - held out is the figure; goal at most 0.02 NDCG@10 for the cross-fitted projection.

Writes ``benchmarks/results/crossfit_projection.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from photo_bridge import NDCG, SUB_METRICS, SUB_RECALL, subset_eval  # noqa: E402

from fusionrank import schema as S  # noqa: E402
from fusionrank.encode import indexed_titles  # noqa: E402
from fusionrank.encoders import ImageTextProjection, fold_of  # noqa: E402
from fusionrank.ingest import Catalog  # noqa: E402
from fusionrank.ranking import CatalogConfig, CatalogTables, QueryEncoder, VectorConfig  # noqa: E402
from fusionrank.ranking.tables import EmbeddingTable  # noqa: E402
from fusionrank.settings import get_settings  # noqa: E402
from fusionrank.store import EmbeddingStore  # noqa: E402


def log(m: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)


def machine_load() -> str:
    import subprocess

    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:5]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}; busiest: " + ", ".join(" ".join(p.split()[::-1]) + "%" for p in ps)


def find_store(home: Path) -> Path:
    """The newest fashion44k workspace under ``home`` with photo features."""
    cands = sorted((p for p in home.glob("fashion44k*/store") if (p / "image.efficientnet_lite0.parquet").exists()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not cands:
        raise SystemExit(f"no encoded fashion44k store with photos under {home}; run `fusionrank train --config configs/fashion44k.toml` first")
    return cands[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=get_settings().home)
    ap.add_argument("--store", type=Path, default=None, help="store directory (default: newest fashion44k store under --home)")
    ap.add_argument("--fields", default="title,title_sparse")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seen-samples", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="crossfit_projection")
    a = ap.parse_args(argv)

    load_before = machine_load()
    t_all = time.perf_counter()
    store_dir = a.store or find_store(a.home)
    cat = Catalog.load(store_dir.parent / "catalog")
    store = EmbeddingStore(store_dir)
    q = cat.queries
    q = q[q["split"] == "dev"].sort_values(S.QUERY_ID).reset_index(drop=True)
    qids, texts = q[S.QUERY_ID].astype(str).tolist(), q[S.QUERY].astype(str).tolist()
    qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(qids))].reset_index(drop=True)
    q_emb = QueryEncoder().encode_many(texts)
    ids = cat.products[S.PRODUCT_ID].astype(str).tolist()
    X, xm = store.matrix("image.efficientnet_lite0", ids)
    res: dict = {"command": " ".join(sys.argv[1:] if argv is None else argv), "folds": a.folds, "epochs": a.epochs,
                 "store": str(store_dir), "fields": {}}
    for tf in [f.strip() for f in a.fields.split(",") if f.strip()]:
        t0 = time.perf_counter()
        T, tm = store.matrix(f"{tf}.minilm", ids)
        titles = indexed_titles(cat.products, tf)
        held_mask = np.array([fold_of(t, 20) == 0 for t in titles]) & xm & tm
        train_mask = xm & tm & ~held_mask
        held = np.flatnonzero(held_mask)
        seen = np.flatnonzero(train_mask)
        folds = np.array([fold_of(t, a.folds) for t in titles], np.int64)
        log(f"{tf}: {len(held):,} held-out products, {len(seen):,} training pairs")
        idx = CatalogTables.from_store(cat.products, store, CatalogConfig(title_field=tf, ann=VectorConfig(codec="exact")),
                                       log=lambda m: None)
        assert list(map(str, idx.ids[:len(ids)])) == ids, "catalogue tables and store disagree on product order"
        out = {"held_out": int(len(held)), "training_pairs": int(len(seen))}
        for name, k in (("single", 1), (f"cross-fitted ({a.folds} folds)", a.folds)):
            t1 = time.perf_counter()
            proj = ImageTextProjection(epochs=a.epochs, temperature=0.05, folds=k, seed=a.seed)
            proj.fit(X[train_mask], T[train_mask], progress=False, folds_of=folds[train_mask] if k > 1 else None)
            rows = np.flatnonzero(xm)
            V = np.zeros(idx.emb["image_proj"].shape, np.float32)
            V[rows] = proj.encode([(int(folds[i]), X[i]) for i in rows] if k > 1 else X[rows])
            idx.emb["image_proj"] = EmbeddingTable.from_rows(V, idx.emb_mask["image_proj"], idx.config.table_dtype)
            rng = np.random.default_rng(a.seed + 1)
            h = subset_eval(idx, held, q_emb, qids, qrels, rng)
            ss = [subset_eval(idx, np.sort(rng.choice(seen, size=len(held), replace=False)), q_emb, qids, qrels, rng)
                  for _ in range(a.seen_samples)]
            part = {"held out": {m: h["photo projection"][m] for m in SUB_METRICS} | {"queries": h["_queries"]["n"]},
                    "seen": {m: float(np.mean([s["photo projection"][m] for s in ss])) for m in SUB_METRICS}
                    | {"queries": float(np.mean([s["_queries"]["n"] for s in ss]))},
                    "dense title, held out": h["dense title (MiniLM)"][NDCG],
                    "dense title, seen": float(np.mean([s["dense title (MiniLM)"][NDCG] for s in ss])),
                    "train_seconds": round(time.perf_counter() - t1, 1)}
            part["gap ndcg@10"] = part["seen"][NDCG] - part["held out"][NDCG]
            out[name] = part
            log(f"{tf} {name}: photo-only ndcg@10 held out {part['held out'][NDCG]:.4f}, seen {part['seen'][NDCG]:.4f}, "
                f"gap {part['gap ndcg@10']:+.4f} ({part['train_seconds']:.0f} s)")
        out["seconds"] = round(time.perf_counter() - t0, 1)
        res["fields"][tf] = out
    res["seconds_total"] = round(time.perf_counter() - t_all)
    res["load_before"], res["load_after"] = load_before, machine_load()
    results = REPO / "benchmarks" / "results"
    (results / f"{a.out}.json").write_text(json.dumps(res, indent=1))
    L = ["# Honest photo features: cross-fitted image->text projection", "",
         f"`benchmarks/crossfit_projection.py {res['command']}`; {res['seconds_total']} s. Photo-only ranking of the 500 "
         "fashion44k dev queries over a slice of the catalogue: the products held out from every projection trained here "
         "(title fold 0 of 20, about 5%), or an equally large random sample of the products the projections trained on "
         f"(mean of {a.seen_samples}); queries without a grade-3 product in the slice are left out. `{SUB_RECALL}` and "
         f"`{NDCG}` (gain 2^g - 1). Dense title: the MiniLM title embedding, for context (it does not depend on the projection).", "",
         f"| title field | projection | held-out products | photo {NDCG} held out | photo {NDCG} seen | gap (seen - held out) | "
         f"{SUB_RECALL} held out / seen | dense title {NDCG} held out / seen | train s |",
         "|---|---|---:|---:|---:|---:|---|---|---:|"]
    for tf, out in res["fields"].items():
        for name, p in out.items():
            if not isinstance(p, dict):
                continue
            L.append(f"| {tf} | {name} | {out['held_out']:,} | {p['held out'][NDCG]:.4f} | {p['seen'][NDCG]:.4f} | "
                     f"**{p['gap ndcg@10']:+.4f}** | {p['held out'][SUB_RECALL]:.4f} / {p['seen'][SUB_RECALL]:.4f} | "
                     f"{p['dense title, held out']:.4f} / {p['dense title, seen']:.4f} | {p['train_seconds']} |")
    L += ["", f"Machine before: {res['load_before']}. After: {res['load_after']}."]
    (results / f"{a.out}.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
