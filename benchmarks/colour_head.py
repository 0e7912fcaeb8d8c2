"""fashion44k: how well the photo colour head reads colours, and what it does to BM25 on `title_sparse`.

    PYTHONPATH=src .venv/bin/python benchmarks/colour_head.py --workspace ~/.cache/fusionrank/fashion44k-full-<hash> \
        [--store /tmp/colour-store] [--ranking]

Per title field (`title`, `title_sparse`), one :class:`~fusionrank.encoders.attributes.ColourHead` is
trained on the products whose title *in that field* states exactly one colour (photo features:
`image.efficientnet_lite0` of the store), as ``fusionrank encode`` does with ``[encoders.attributes]``.
Reported:

- held-out accuracy of the head (a stratified 10% of its own training products, at fit time);
- coverage: the share of products with a photo and no colour in their title that get a prediction
  (probability >= threshold), for several thresholds;
- precision on the products whose `title_sparse` lost its colour (the full `title` states exactly one):
  the prediction of the `title_sparse` head against the colour of the full `title`. The full title is
  read here only to score; it is never used to train the `title_sparse` head.

With ``--ranking``: dev NDCG@10 of BM25 over the title field, plain and expanded with the photo colour
(the catalogue's own lexical text, :func:`fusionrank.ranking.catalog.lexical_texts`), per title field.
Writes ``benchmarks/results/colour_head.md`` (and ``.json``).
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

from fusionrank import schema as S  # noqa: E402
from fusionrank.encode import indexed_titles  # noqa: E402
from fusionrank.encoders.attributes import ColourHead, title_colour  # noqa: E402
from fusionrank.ingest import Catalog  # noqa: E402
from fusionrank.store import EmbeddingStore  # noqa: E402

FIELDS = ("title", "title_sparse")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def head_quality(products: pd.DataFrame, store: EmbeddingStore, args) -> tuple[list[dict], dict]:
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    X, has_photo = store.matrix("image.efficientnet_lite0", ids)
    full = np.array([title_colour(t) for t in indexed_titles(products, "title")], dtype=object)
    rows, preds = [], {}
    for tf in FIELDS:
        colour = np.array([title_colour(t) for t in indexed_titles(products, tf)], dtype=object)
        one = has_photo & np.array([isinstance(c, str) and c != "" for c in colour])
        none = has_photo & (colour == "")
        t0 = time.perf_counter()
        head = ColourHead(threshold=args.threshold, C=args.C, min_examples=args.min_examples).fit(X[one], colour[one])
        secs = time.perf_counter() - t0
        proba = head.predict_proba(X[none])
        cls = np.asarray(head.classes_, dtype=object)
        best, conf = cls[proba.argmax(1)], proba.max(1)
        preds[tf] = dict(zip(np.asarray(ids, dtype=object)[none], np.where(conf >= args.threshold, best, "")))
        truth = full[none]
        lost = np.array([isinstance(c, str) and c != "" for c in truth])  # colourless in tf, one colour in title
        known = lost & np.isin(truth, cls)
        h = head.history_
        for th in THRESHOLDS:
            on = conf >= th
            sel = on & lost
            rows.append({
                "title field": tf, "threshold": th, "trained on": h["examples"], "classes": h["classes"],
                "held-out accuracy": round(h.get("held_out_accuracy", float("nan")), 3),
                "fit s": round(secs, 1),
                "colourless titles with a photo": int(none.sum()),
                "coverage": round(float(on.mean()), 3),
                "lost colour (eval)": int(lost.sum()),
                "precision vs full title": round(float((best[sel] == truth[sel]).mean()), 3) if sel.any() else None,
                "coverage of lost": round(float(sel.sum() / max(1, lost.sum())), 3),
                "accuracy on lost, argmax, learnable classes": round(float((best[known] == truth[known]).mean()), 3) if known.any() else None,
            })
        print(f"{tf}: trained on {h['examples']} ({h['classes']} classes, dropped {h['dropped_classes']}) in {secs:.0f} s; "
              f"held-out accuracy {h.get('held_out_accuracy', float('nan')):.3f}", flush=True)
    return rows, preds


def ranking(cat: Catalog, preds: dict, args) -> list[dict]:
    """Dev NDCG@10 of BM25 over the title field's lexical text, plain and with the photo colour appended."""
    from fusionrank.metrics import evaluate
    from fusionrank.modalities import modality
    from fusionrank.ranking.catalog import lexical_texts
    from fusionrank.ranking.lexical import LexicalField

    p = cat.products
    ids = p[S.PRODUCT_ID].astype(str).to_numpy(dtype=object)
    q = cat.queries[cat.queries["split"] == "dev"]
    qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(q[S.QUERY_ID]))]
    desc = [d if isinstance(d, str) else "" for d in p[S.DESCRIPTION].tolist()]
    field = modality("text").lexical
    out = []
    for tf in FIELDS:
        titles = indexed_titles(p, tf)
        for name, photo in (("plain", None), ("photo colour appended", [preds[tf].get(i) or None for i in ids])):
            texts = lexical_texts(titles, desc, [None] * len(ids), photo)[field]
            lf = LexicalField.build(texts, 1.2, 0.75)
            parts = []
            for qid, qs in zip(q[S.QUERY_ID], q[S.QUERY]):
                r, sc = lf.score(lf.query_terms(qs)).arrays()
                top = np.argsort(-sc, kind="stable")[:100]
                parts.append(pd.DataFrame({S.QUERY_ID: qid, S.PRODUCT_ID: ids[r[top]], S.SCORE: sc[top].astype(float)}))
            res = evaluate(qrels, pd.concat(parts, ignore_index=True), ["ndcg@10"]).mean
            out.append({"title field": tf, "BM25 over": name, "dev ndcg@10": round(float(res["ndcg@10"]), 4)})
            print(out[-1], flush=True)
    return out


def md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="an ingested and encoded fashion44k workspace (catalog/, store/)")
    ap.add_argument("--store", default=None, help="read photo features from this store instead of <workspace>/store")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--C", type=float, default=0.05)
    ap.add_argument("--min-examples", type=int, default=30)
    ap.add_argument("--ranking", action="store_true", help="also BM25 dev NDCG@10, plain vs expanded")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "colour_head"))
    args = ap.parse_args()
    ws = Path(args.workspace).expanduser()
    cat = Catalog.load(ws / "catalog")
    store = EmbeddingStore(Path(args.store) if args.store else ws / "store")
    t0 = time.perf_counter()
    rows, preds = head_quality(cat.products, store, args)
    rank = ranking(cat, preds, args) if args.ranking else []
    res = {"threshold": args.threshold, "C": args.C, "min_examples": args.min_examples, "head": rows, "ranking": rank,
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    md = [f"# Photo colour head on fashion44k (`benchmarks/colour_head.py`)\n",
          f"C = {args.C}, min_examples = {args.min_examples}; the head's own threshold for the ranking rows: {args.threshold}.\n",
          md_table(rows)]
    if rank:
        md += ["\n## BM25 over the title field, dev NDCG@10\n", md_table(rank)]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}.md in {res['seconds']} s")


if __name__ == "__main__":
    main()
