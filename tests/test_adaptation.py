"""A config with ``[encoders.text] name = "minilm_adapter"`` trains end to end on the tiny catalogue.

``train`` fits the adapter on the catalogue's pairs and the training judgments, saves it with
the model, and derives the adapted store features from the cached MiniLM vectors; evaluation
and serving open the model with the same adapter (its queries and its catalogue in one space).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fixtures_fashion import tiny_config_dict

ADAPTER = {"name": "minilm_adapter", "args": {"epochs": 2, "hard_negatives": 2, "negative_depth": 10, "max_positives": 4,
                                              "penalty": 0.01}}


def quiet(_m) -> None:
    pass


@pytest.fixture(scope="module")
def adapter_model(tiny_workspace, tiny_fashion, tmp_path_factory):
    import torch

    from fusionrank.experiment import ExperimentConfig, train

    torch.set_num_threads(1)
    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, encoders={"text": ADAPTER}))
    out = tmp_path_factory.mktemp("models") / "adapter"
    logs: list[str] = []
    metrics = train(cfg, out, log=logs.append, progress=False)
    return out, metrics, logs


def test_config_encodes_the_base_and_rejects_unknown_names(tiny_fashion):
    from fusionrank.encode import EncodeSettings
    from fusionrank.experiment import ExperimentConfig

    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, encoders={"text": ADAPTER}))
    assert cfg.text_encoder_name == "minilm_adapter"
    assert cfg.encode_settings().text == {"name": "minilm", "args": {}}  # encode caches MiniLM's vectors
    assert EncodeSettings(text={"name": "minilm_adapter", "args": {"epochs": 1}}).text == {"name": "minilm", "args": {}}
    assert "state" not in cfg.text_encoder_spec
    assert cfg.with_text_encoder_state("/x").text_encoder_spec["state"] == "/x"
    assert "state" not in cfg.with_text_encoder_state("/x").model_dump(mode="json")["encoders"]["text"]
    with pytest.raises(Exception) as e:
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, encoders={"text": {"name": "minilm_adaptr"}}))
    assert "minilm_adapter" in str(e.value) and "bm25" in str(e.value)
    with pytest.raises(Exception, match="unknown argument 'epoch'"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, encoders={"text": {"name": "minilm_adapter",
                                                                                              "args": {"epoch": 2}}}))


def test_train_fits_saves_and_derives(adapter_model, tiny_workspace):
    from fusionrank.encoders import Encoder, MiniLMAdapter
    from fusionrank.modeldir import ModelDir
    from fusionrank.store import EmbeddingStore, text_hashes

    out, metrics, logs = adapter_model
    ws, cat = tiny_workspace
    md = ModelDir.open(out)
    adapter = Encoder.load(md.text_encoder_dir)
    assert isinstance(adapter, MiniLMAdapter) and np.linalg.norm(adapter.weight_) > 0
    assert adapter.history_[0]["epoch"] == -1 and len(adapter.history_) == 3  # validation recall before + 2 epochs
    assert md.config().text_encoder_spec["state"] == str(md.text_encoder_dir)
    assert any("minilm_adapter: trained" in m for m in logs)
    # the fit is also kept in the store, keyed by what it was fitted on
    assert [p.name for p in (ws.store_dir / "models").glob("minilm_adapter.*")]
    store = EmbeddingStore(ws.store_dir)
    sig = adapter.signature()
    for base, feat in [("title.minilm", "title.minilm_adapter"), ("title_sparse.minilm", "title_sparse.minilm_adapter"),
                       ("transcript.minilm", "transcript.minilm_adapter"), ("image_proj.title", "image_proj.title.minilm_adapter")]:
        b, f = store.load(base), store.load(feat)
        assert list(f.ids) == list(b.ids) and f.meta["signature"] == sig and f.meta["base"] == base
        assert list(f.hashes) == text_hashes([str(h) for h in b.hashes], sig)
        np.testing.assert_allclose(f.vectors, adapter.adapt(b.vectors), atol=1e-6)
    assert {"ndcg@10", "recall@100"} <= set(metrics["dev/title"])


def test_evaluation_and_serving_encode_queries_with_the_models_adapter(adapter_model):
    from fusionrank.encoders import Encoder
    from fusionrank.modeldir import ModelDir

    out, _, _ = adapter_model
    md = ModelDir.open(out)
    adapter = Encoder.load(md.text_encoder_dir)
    tables = md.catalog_tables(log=quiet)
    pipe = md.pipeline(tables)
    for q in ["red cotton shirt", "black watch for men"]:
        np.testing.assert_allclose(pipe.encoder.encode(q)[0], adapter.encode([q])[0], atol=1e-5)
    # the catalogue's title table holds the adapted vectors
    row = 0
    pid = tables.ids[row]
    from fusionrank.store import EmbeddingStore

    base = EmbeddingStore(md.workspace().store).matrix("title.minilm", [pid])[0]
    np.testing.assert_allclose(tables.emb["title"][np.array([row])][0], adapter.adapt(base)[0], atol=1e-5)


def test_opening_rederives_when_the_store_holds_another_fit(adapter_model):
    from fusionrank.adaptation import derive_features
    from fusionrank.encoders import Encoder, MiniLMAdapter
    from fusionrank.modeldir import ModelDir
    from fusionrank.store import EmbeddingStore

    out, _, _ = adapter_model
    md = ModelDir.open(out)
    store = EmbeddingStore(md.workspace().store)
    other = MiniLMAdapter(**ADAPTER["args"]).initialise()
    assert derive_features(store, other, ["title"], log=quiet)["title.minilm_adapter"] == "derived"
    assert store.load("title.minilm_adapter").meta["signature"] == other.signature()
    md.catalog_tables(log=quiet)  # opening the model derives its own again
    mine = Encoder.load(md.text_encoder_dir)
    assert store.load("title.minilm_adapter").meta["signature"] == mine.signature()
    assert derive_features(store, mine, ["title"], log=quiet)["title.minilm_adapter"] == "cached"


def test_judged_positives_read_only_the_given_queries():
    from fusionrank.adaptation import judged_positives

    queries = pd.DataFrame({"query_id": ["tr1", "tr2"], "query": ["a", "b"]})
    qrels = pd.DataFrame({"query_id": ["tr1", "tr1", "tr2", "dev1", "tr2"], "product_id": ["p1", "p2", "p3", "p1", "p4"],
                          "grade": [3, 2, 3, 3, 3]})
    qi, rows = judged_positives(queries, qrels, {"p1": 0, "p2": 1, "p3": 2}, max_positives=8, seed=0)
    assert sorted(zip(qi, rows)) == [(0, 0), (1, 2)]  # grade 3 only, dev1 never read, p4 not in the catalogue


def test_a_product_put_to_the_service_gets_the_catalogues_adapted_vectors(adapter_model, tiny_fashion):
    """PUT /products: title and projected photo mapped by the model's adapter, as the store's rows were."""
    from fusionrank import schema as S
    from fusionrank.ingest import Catalog
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving.products import ProductEncoder
    from fusionrank.store import EmbeddingStore

    out, _, _ = adapter_model
    md = ModelDir.open(out)
    config = md.config()
    cat_dir, store_dir = md.catalog_location()
    products = Catalog.load(cat_dir).products
    store = EmbeddingStore(store_dir)
    ids = products[S.PRODUCT_ID].astype(str).tolist()
    T, _ = store.matrix("title.minilm_adapter", ids)
    P, pm = store.matrix("image_proj.title.minilm_adapter", ids)
    i = int(np.flatnonzero(pm)[0])
    row = products.iloc[i]
    pe = ProductEncoder(S.TITLE, config.encode_settings(), store_dir, media_dirs=[str(tiny_fashion.root)],
                        text_encoder=config.text_encoder_spec)
    _, _, vectors, _ = pe.encode({S.PRODUCT_ID: "new-1", S.TITLE: row[S.TITLE], S.IMAGE: row[S.IMAGE]})
    np.testing.assert_allclose(vectors["title"], T[i], atol=1e-5)
    # the photo is decoded and encoded again, alone rather than in the store's batch: the same vector up to float
    # reassociation in the convolutions, which the projection carries to ~1e-4 on some CPUs
    np.testing.assert_allclose(vectors["image_proj"], P[i], atol=5e-4)
    assert float(vectors["image_proj"] @ P[i]) / float(np.linalg.norm(vectors["image_proj"]) * np.linalg.norm(P[i])) > 0.9999


def test_hard_negatives_come_from_the_top_of_both_retrievers_and_skip_judged_products():
    from fusionrank.adaptation import hard_negatives
    from fusionrank.encoders.adapter import l2_normalise

    rng = np.random.default_rng(0)
    titles = ["red shirt", "red dress", "blue jeans", "black watch", "green scarf", "red shirt cotton", "white socks", "brown belt"]
    vecs = l2_normalise(rng.normal(size=(len(titles), 384)))
    q = l2_normalise(vecs[3:4] + 0.01 * rng.normal(size=(1, 384)))  # densely next to "black watch"
    out = hard_negatives(q, ["red shirt"], titles, vecs, relevant=[{0}], depth=2, n=20, seed=0)
    assert out.shape == (1, 20)
    # depth 2: MiniLM's top two (3, black watch, and one more) and BM25's ("red shirt" judged, "red shirt cotton")
    got = set(out[0].tolist())
    assert {3, 5} <= got and 0 not in got and len(got) <= 3
    none = hard_negatives(q, ["red shirt"], titles, vecs, relevant=[set(range(len(titles)))], depth=3, n=2, seed=0)
    assert (none == -1).all()  # every candidate judged relevant: no negative
