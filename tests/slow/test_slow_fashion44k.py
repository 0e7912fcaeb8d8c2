"""Real-data checks on fashion44k (run on demand: `pytest -m slow`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusionrank import schema as S
from fusionrank.encode import EncodeSettings, encode_catalog
from fusionrank.encoders import BM25Encoder
from fusionrank.ingest import ingest
from fusionrank.metrics import evaluate
from fusionrank.ranking import topk_rows
from fusionrank.store import EmbeddingStore

REPO = Path(__file__).resolve().parents[2]
DATA = next((p for p in (REPO.parent / "shared" / "data" / "fashion44k", Path("/work/shared/data/fashion44k")) if p.exists()), None)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(DATA is None, reason="fashion44k not found beside the repository")]


def test_bm25_over_full_titles_reproduces_the_reference_figure():
    """The data README's BM25 reference on dev is NDCG@10 0.681 (title) / 0.626 (title_sparse)."""
    products = pd.read_parquet(DATA / "products.parquet")
    queries = pd.read_csv(DATA / "queries_dev.tsv", sep="\t", dtype=str)
    qrels = pd.read_csv(DATA / "qrels_dev.tsv", sep="\t", dtype={"query_id": str, "product_id": str})
    ids = products["product_id"].astype(str).to_numpy()
    for field, ref in (("title", 0.681), ("title_sparse", 0.626)):
        bm = BM25Encoder().fit(products[field].tolist())
        scores = (bm.encode_queries(queries["query"].tolist()) @ bm.encode(products[field].tolist()).T).toarray()
        rows = topk_rows(scores, 100)
        run = pd.concat([pd.DataFrame({S.QUERY_ID: q, S.PRODUCT_ID: ids[r[r >= 0]], S.SCORE: scores[i, r[r >= 0]]})
                         for i, (q, r) in enumerate(zip(queries["query_id"], rows))])
        got = evaluate(qrels, run, ["ndcg@10"]).mean["ndcg@10"]
        assert abs(got - ref) < 0.01, (field, got, ref)


def test_real_subset_ingests_and_encodes(tmp_path):
    cat = ingest(DATA, tmp_path / "catalog", adapter="fashion44k", limit=300)
    rep = cat.report["products"]
    assert rep["read"] == 300 and rep["kept"] == 300 and rep["rejected"] == 0
    assert cat.report["qrels"]["skipped"] > 0  # judgments of products outside the subset are counted, not lost
    settings = EncodeSettings(transcriber=None)
    summary = encode_catalog(cat.products, tmp_path / "store", settings, modalities=["text", "image", "audio"], progress=False)
    jobs = {j["feature"]: j for j in summary["jobs"]}
    assert jobs["title.minilm"]["failed"] == 0 and jobs["image.efficientnet_lite0"]["encoded"] == 300
    store = EmbeddingStore(tmp_path / "store")
    X, mask = store.matrix("image_proj.title", cat.products[S.PRODUCT_ID].tolist())
    assert mask.all() and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-4)
    has_audio = cat.products[S.AUDIO].notna().to_numpy()
    _, amask = store.matrix("audio.logmel_stats", cat.products[S.PRODUCT_ID].tolist(), dim=107)
    assert (amask == has_audio).all()
