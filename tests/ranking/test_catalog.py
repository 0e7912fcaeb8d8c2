"""CatalogTables on the tiny fashion44k-layout dataset: records, embedding tables and masks, BM25 texts, filters."""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank import schema as S
from fusionrank.errors import FusionrankError, UnknownCategory
from fusionrank.modalities import MODALITIES, TABLES, modality
from fusionrank.ranking import CatalogConfig, CatalogTables, VectorConfig
from fusionrank.ranking.catalog import INDEXED_TITLE, RECORD_COLUMNS, TRANSCRIPT_TEXT
from fusionrank.ranking.vectors import AnnIndex, ExactVectors

TEXT, IMAGE, AUDIO = (modality(m).index for m in ("text", "image", "audio"))


def test_build_and_modality_masks(tables, attrs):
    assert len(tables) == 120 and tables.n_rows == 120
    assert set(tables.records) == set(RECORD_COLUMNS) and all(len(tables.records[c]) == 120 for c in RECORD_COLUMNS)
    rows = np.arange(120)
    m = tables.modality_mask(rows)
    assert m.shape == (120, 3) and m.dtype == bool
    ids = list(tables.ids)
    np.testing.assert_array_equal(m[:, TEXT], np.ones(120, bool))
    np.testing.assert_array_equal(m[:, IMAGE], attrs.loc[ids, "has_image"].to_numpy(bool))
    np.testing.assert_array_equal(m[:, AUDIO], attrs.loc[ids, "has_audio"].to_numpy(bool))
    # the per-table masks are the modality masks; embeddings of absent modalities are zeros, present ones unit length
    for name, k in (("image_proj", IMAGE), ("transcript", AUDIO), ("title", TEXT)):
        np.testing.assert_array_equal(tables.emb_mask[name], m[:, k])
        e = tables.emb[name]
        assert e.shape == (120, 384) and e.dtype == np.float32
        assert not e[~m[:, k]].any()
        np.testing.assert_allclose(np.linalg.norm(e[m[:, k]], axis=1), 1.0, atol=1e-4)
    assert tables.rows_of(["1000", "nope"]).tolist() == [0, -1]
    # padding rows (-1) have no modality
    assert not tables.modality_mask(np.array([[-1, 0]]))[0, 0].any() and tables.modality_mask(np.array([[-1, 0]]))[0, 1, TEXT]


def test_records_hold_what_the_products_say(tables, attrs, tiny_workspace):
    products = tiny_workspace[1].products.set_index(S.PRODUCT_ID)
    for pid in ("1000", "1005", "1003", "1119"):
        row = int(tables.rows_of([pid])[0])
        rec = tables.record(row)
        assert tables.product(pid) == rec
        a = attrs.loc[pid]
        assert rec[S.PRODUCT_ID] == pid and rec[S.TITLE] == a["title"] and rec[INDEXED_TITLE] == a["title"]
        assert rec[S.CATEGORY] == a["category"]
        assert rec["modalities"] == {"text": True, "image": bool(a["has_image"]), "audio": bool(a["has_audio"])}
        if a["has_image"]:
            assert rec[S.IMAGE] == products.loc[pid, S.IMAGE] and rec[S.IMAGE].endswith(f"{pid}.jpg")
        else:
            assert rec[S.IMAGE] is None
        assert (rec[S.AUDIO] is not None) == bool(a["has_audio"])
        # the transcript is the store's (written by the fixture), only for products with a clip
        if a["has_audio"]:
            assert rec[TRANSCRIPT_TEXT] == f"this {a['brand'].lower()} {a['article'].lower()} comes in {a['colour'].lower()}"
        else:
            assert rec[TRANSCRIPT_TEXT] is None
    assert tables.product("nope") is None


def test_lexical_texts_are_the_indexed_title_and_the_transcript(tables, sparse_tables, attrs):
    ids = list(tables.ids)
    assert list(tables.lex_text["title"]) == attrs.loc[ids, "title"].tolist()          # no descriptions here
    assert list(sparse_tables.lex_text["title"]) == attrs.loc[ids, "title_sparse"].tolist()
    assert list(sparse_tables.records[INDEXED_TITLE]) == attrs.loc[ids, "title_sparse"].tolist()
    assert list(sparse_tables.records[S.TITLE]) == attrs.loc[ids, "title"].tolist()   # the display title stays
    tr = [t or "" for t in tables.records[TRANSCRIPT_TEXT]]
    assert list(tables.lex_text["transcript"]) == tr
    assert [bool(t) for t in tr] == attrs.loc[ids, "has_audio"].tolist()
    for f in ("title", "transcript"):
        assert tables.lexical[f].n_live == 120


def test_categories_and_row_filters(tables, attrs):
    assert tables.category_names == ["Accessories", "Apparel", "Footwear"]
    assert tables.has_category("footwear") and tables.has_category("FOOTWEAR") and not tables.has_category("Jewellery")
    assert tables.row_filter(None) is None and tables.row_filter("") is None
    flt = tables.row_filter("FootWear")
    want = (attrs.loc[list(tables.ids), "category"] == "Footwear").to_numpy()
    np.testing.assert_array_equal(flt.mask, want)
    assert flt.fraction == pytest.approx(want.mean())
    np.testing.assert_array_equal(np.unpackbits(flt.bits, bitorder="little")[:120].astype(bool), want)
    assert tables.row_filter("footwear") is flt      # cached while the tables do not change
    with pytest.raises(UnknownCategory, match="unknown category 'Jewellery'; valid: Accessories, Apparel, Footwear"):
        tables.row_filter("Jewellery")


def test_vector_search_per_dense_table(tables, tiny_workspace):
    assert tables.dense_tables() == ["title", "image_proj", "transcript"]
    assert all(isinstance(tables.vectors[t], ExactVectors) for t in TABLES)
    flat = CatalogTables.from_store(tiny_workspace[1].products, tiny_workspace[0].store_dir,
                                    CatalogConfig(ann=VectorConfig(codec="flat")), log=lambda m: None)
    for t in TABLES:
        a = flat.vectors[t]
        assert isinstance(a, AnnIndex) and a.codec == "flat"
        assert a.ntotal == int(flat.emb_mask[t].sum())           # only rows that have the modality are indexed
    mem = flat.memory_bytes()
    assert set(mem) == {"embeddings", "ann", "bm25", "rows"} and all(v > 0 for v in mem.values())


def test_from_store_names_the_command_for_a_missing_title_embedding(tiny_workspace):
    ws, cat = tiny_workspace
    with pytest.raises(FusionrankError, match=r"no 'nope\.minilm' feature.*fusionrank encode"):
        CatalogTables.from_store(cat.products, ws.store_dir, CatalogConfig(title_field="nope"), log=lambda m: None)


def small_inputs(ids):
    n = len(ids)
    rng = np.random.default_rng(0)
    emb = {t: rng.normal(size=(n, 4)).astype(np.float32) for t in TABLES}
    mask = {t: np.ones(n, bool) for t in TABLES}
    return {S.PRODUCT_ID: ids, S.TITLE: [f"t{i}" for i in range(n)]}, {"title": ["a"] * n, "transcript": [""] * n}, emb, mask


def test_build_rejects_duplicate_ids_and_fills_missing_columns():
    cfg = CatalogConfig(ann=VectorConfig(codec="exact"))
    with pytest.raises(FusionrankError, match="duplicate product ids"):
        CatalogTables.build(*small_inputs(["a", "b", "a"]), cfg, log=lambda m: None)
    t = CatalogTables.build(*small_inputs([1, 2]), cfg, log=lambda m: None)
    assert list(t.ids) == ["1", "2"] and t.rows_of([2, "1"]).tolist() == [1, 0]   # ids are strings
    assert t.record(0)[S.CATEGORY] is None and t.category_names == []
    assert t.record(1)["modalities"] == {m.name: True for m in MODALITIES}
