"""fashion44k: how well the photo colour head reads colours, and what it does to BM25 on `title_sparse`.

    cp -r <workspace>/store /tmp/colour-store        # the job writes models and features: use a copy
    PYTHONPATH=src .venv/bin/python benchmarks/colour_head.py --workspace ~/.cache/fusionrank/fashion44k-full-<hash> \\
        --store /tmp/colour-store [--head-args '{"threshold": 0.5}'] [--ranking]

Runs the encode job as ``fusionrank encode`` does with ``[encoders.attributes]`` (image modality only, no
projection): per title field (`title`, `title_sparse`), a :class:`~fusionrank.encoders.attributes.ColourHead`
trained on the products whose title *in that field* states exactly one colour, from the photo features in the
store, and ``photo_colour.<title field>`` for the products with a photo whose title states none. Reported:

- held-out accuracy of the head (a stratified 10% of its own training products, at fit time);
- coverage: the share of products with a photo and no colour in their title that get a prediction
  (probability >= threshold), for several thresholds;
- precision on the products whose `title_sparse` lost its colour (the full `title` states exactly one):
  the prediction of the `title_sparse` head against the colour of the full `title`. The full title is
  read here only to score; it never reaches the `title_sparse` head.

With ``--ranking``: dev NDCG@10 of BM25 over the catalogue's title field, plain and expanded with the photo
colour (``CatalogTables.from_store`` with ``photo_attributes`` off and on), per title field.
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
from fusionrank.encode import EncodeSettings, encode_catalog, indexed_titles  # noqa: E402
from fusionrank.encoders import Encoder  # noqa: E402
from fusionrank.encoders.attributes import colour_head_dir, photo_colour_feature, title_colour  # noqa: E402
from fusionrank.ingest import Catalog  # noqa: E402
from fusionrank.store import EmbeddingStore  # noqa: E402

FIELDS = ("title", "title_sparse")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def head_quality(products: pd.DataFrame, store: EmbeddingStore) -> list[dict]:
    """Per title field and threshold: the saved head's quality on the products it was applied to."""
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    full = np.array([title_colour(t) for t in indexed_titles(products, "title")], dtype=object)
    rows = []
    for tf in FIELDS:
        head = Encoder.load(colour_head_dir(store.root, tf))
        mats = [store.matrix(f"image.{name}", ids) for name in head.inputs]
        X, has_photo = np.hstack([m[0] for m in mats]), np.logical_and.reduce([m[1] for m in mats])
        colour = np.array([title_colour(t) for t in indexed_titles(products, tf)], dtype=object)
        none = has_photo & (colour == "")
        stored = store.text_map(photo_colour_feature(tf))
        assert set(stored) == set(np.asarray(ids, dtype=object)[none]), "the job's rows are the colourless titles"
        proba = head.predict_proba(X[none]) if none.any() else np.zeros((0, len(head.classes_)))
        cls = np.asarray(head.classes_, dtype=object)
        best, conf = cls[proba.argmax(1)], proba.max(1)
        truth = full[none]
        lost = np.array([isinstance(c, str) and c != "" for c in truth])  # colourless in tf, one colour in title
        h = head.history_
        for th in THRESHOLDS:
            on = conf >= th
            sel = on & lost
            rows.append({
                "title field": tf, "threshold": th, "trained on": h["examples"], "classes": h["classes"],
                "held-out accuracy": round(h.get("held_out_accuracy", float("nan")), 3),
                "colourless titles with a photo": int(none.sum()),
                "coverage": round(float(on.mean()), 3) if len(on) else None,
                "lost colour (eval)": int(lost.sum()),
                "coverage of lost": round(float(sel.sum() / max(1, lost.sum())), 3),
                "precision vs full title": round(float((best[sel] == truth[sel]).mean()), 3) if sel.any() else None,
                "shares a word": round(float(np.mean([bool(set(a.split()) & set(b.split())) for a, b in zip(best[sel], truth[sel])])), 3)
                if sel.any() else None,
            })
        print(f"{tf}: head trained on {h['examples']} photos ({h['classes']} colours; dropped {h['dropped_classes']}); "
              f"held-out accuracy {h.get('held_out_accuracy', float('nan')):.3f}", flush=True)
    return rows


def ranking(cat: Catalog, store: EmbeddingStore) -> list[dict]:
    """Dev NDCG@10 of BM25 over the catalogue's title field, photo attributes off and on."""
    from fusionrank.metrics import evaluate
    from fusionrank.modalities import modality
    from fusionrank.ranking import CatalogConfig, CatalogTables, VectorConfig

    from fusionrank.ranking.catalog import lexical_texts
    from fusionrank.ranking.lexical import LexicalField

    q = cat.queries[cat.queries["split"] == "dev"]
    qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(q[S.QUERY_ID]))]
    field = modality("text").lexical
    out = []

    def score(system: str, tf: str, lf: LexicalField, ids: np.ndarray) -> None:
        parts = []
        for qid, qs in zip(q[S.QUERY_ID], q[S.QUERY]):
            r, sc = lf.score(lf.query_terms(qs)).arrays()
            top = np.argsort(-sc, kind="stable")[:100]
            parts.append(pd.DataFrame({S.QUERY_ID: qid, S.PRODUCT_ID: ids[r[top]], S.SCORE: sc[top].astype(float)}))
        res = evaluate(qrels, pd.concat(parts, ignore_index=True), ["ndcg@10", "recall@100"]).mean
        out.append({"title field": tf, "BM25 over the title field": system,
                    "dev ndcg@10": round(float(res["ndcg@10"]), 4), "dev recall@100": round(float(res["recall@100"]), 4)})
        print(out[-1], flush=True)

    for tf in FIELDS:
        for on in (False, True):
            tables = CatalogTables.from_store(cat.products, store, CatalogConfig(title_field=tf, ann=VectorConfig(codec="exact"),
                                                                                  photo_attributes=on), log=lambda m: None)
            score("photo colour appended" if on else "plain", tf, tables.lexical[field], tables.ids)
    # the ceiling of the expansion: a perfect head (the full title's colour appended to title_sparse; evaluation only)
    p = cat.products
    sparse, full = indexed_titles(p, "title_sparse"), indexed_titles(p, "title")
    oracle = [(title_colour(f) or None) if title_colour(t) == "" else None for t, f in zip(sparse, full)]
    desc = [d if isinstance(d, str) else "" for d in p[S.DESCRIPTION].tolist()]
    texts = lexical_texts(sparse, desc, [None] * len(p), oracle)[field]
    score("full title's colour appended (ceiling, evaluation only)", "title_sparse", LexicalField.build(texts, 1.2, 0.75),
          p[S.PRODUCT_ID].astype(str).to_numpy(dtype=object))
    return out


def md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="an ingested and encoded fashion44k workspace (catalog/, store/)")
    ap.add_argument("--store", required=True, help="a copy of the workspace's store: the job writes its models and features there")
    ap.add_argument("--head-args", default="{}", help="colour_head arguments (JSON)")
    ap.add_argument("--ranking", action="store_true", help="also BM25 dev NDCG@10, plain vs expanded")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "colour_head"))
    args = ap.parse_args()
    ws = Path(args.workspace).expanduser()
    store_dir = Path(args.store).expanduser()
    if store_dir.resolve() == (ws / "store").resolve():
        raise SystemExit("--store must be a copy of the workspace's store, not the store itself")
    cat = Catalog.load(ws / "catalog")
    head = {"name": "colour_head", "args": json.loads(args.head_args)}
    settings = EncodeSettings(transcriber=None, audio_features=None, projection=None, attributes=head)
    t0 = time.perf_counter()
    summary = encode_catalog(cat.products, store_dir, settings, modalities=["image"], progress=False, content_dir=None,
                             log=lambda m: print(m, flush=True))
    encode_s = time.perf_counter() - t0
    store = EmbeddingStore(store_dir)
    rows = head_quality(cat.products, store)
    rank = ranking(cat, store) if args.ranking else []
    res = {"head": head, "encode_jobs": summary["jobs"], "encode_seconds": round(encode_s, 1), "quality": rows, "ranking": rank,
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    sp = [r for r in rows if r["title field"] == "title_sparse"]
    md = ["# Photo colour head on fashion44k (`benchmarks/colour_head.py`)\n",
          f"Head: `{json.dumps(head)}` (defaults otherwise: inputs EfficientNet-Lite0 + colour histogram). "
          f"Encode job this run: {encode_s:.0f} s on a shared 2-core machine, "
          f"{sum(j['encoded'] for j in summary['jobs']):,} items encoded"
          f"{' (everything cached: heads and photo colours of an earlier run)' if not any(j['encoded'] for j in summary['jobs']) else ''}.\n",
          "Rows per threshold are what the head would give at that threshold; the job itself uses the head's own threshold.\n",
          md_table(rows)]
    if rank:
        md += ["\n## BM25 over the title field, dev NDCG@10 (500 queries, whole catalogue)\n", md_table(rank)]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}.md in {res['seconds']} s; title_sparse at 0.5: {[r for r in sp if r['threshold'] == 0.5]}")


if __name__ == "__main__":
    main()
