"""Index shards: the router's merged candidates equal the unsplit catalogue's (rows, order, scores).

Over the tiny catalogue (120 products, many repeated titles, so BM25 ties at the cut are common),
for K = 2 and 3 shards, with exact vector search and with IVF (few lists, a small ``nprobe``, so
that which lists are probed matters), with and without a category filter.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusionrank.errors import UnknownCategory
from fusionrank.ranking import CandidateConfig, CatalogConfig, CatalogTables, HybridRetriever, Queries, QueryEncoder
from fusionrank.ranking.catalog import VectorConfig
from fusionrank.serving.shards import RayShard, Shard, ShardRouter, split

ANN = {"exact": {"codec": "exact"}, "ivf-flat": {"codec": "flat", "nlist": 4, "nprobe": 2},
       "ivf-sq8": {"codec": "sq8", "nlist": 4, "nprobe": 1},
       # float16 tables: a shard's IVF entries are the whole index's codes (made from the float32 vectors), not codes
       # made again from the rounded vectors its tables hold
       "ivf-sq8-float16": {"codec": "sq8", "nlist": 4, "nprobe": 1, "table_dtype": "float16"}}


def build_tables(tiny_workspace, ann: dict) -> CatalogTables:
    ws, cat = tiny_workspace
    ann = dict(ann)
    dtype = ann.pop("table_dtype", "float32")
    cfg = CatalogConfig(candidates=CandidateConfig(n=20, depth=20), ann=VectorConfig(**ann), table_dtype=dtype)
    return CatalogTables.from_store(cat.products, ws.store_dir, cfg, "minilm", "whisper_tiny_en", log=lambda m: None)


@pytest.fixture(scope="module")
def queries(tiny_fashion, fusionrank_home) -> Queries:
    texts = list(tiny_fashion.queries["train"]["query"]) + list(tiny_fashion.queries["dev"]["query"])
    texts += ["nike", "shoes shoes shoes", "zebra"]  # one term (ties), a repeated term, a term no product has
    return QueryEncoder().transform(Queries.of(texts))


@pytest.fixture(scope="module", params=list(ANN))
def unsplit(request, tiny_workspace):
    return build_tables(tiny_workspace, ANN[request.param])


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for b in range(len(want)):
        np.testing.assert_array_equal(got.rows[b], want.rows[b], err_msg=f"query {b}: candidates")
        np.testing.assert_array_equal(got.scores[b], want.scores[b], err_msg=f"query {b}: fused scores")
        assert got.qlen[b] == want.qlen[b]
        assert got.sources[b] == want.sources[b]
        for src in want.lists.rows:
            np.testing.assert_array_equal(got.lists.rows[src][b], want.lists.rows[src][b], err_msg=f"query {b}: {src} rows")
            np.testing.assert_array_equal(got.lists.scores[src][b], want.lists.scores[src][b], err_msg=f"query {b}: {src} scores")


@pytest.mark.parametrize("k", [2, 3])
def test_merged_candidates_equal_the_unsplit_catalogues(unsplit, queries, k):
    want = HybridRetriever(unsplit).transform(queries)
    router = ShardRouter(split(unsplit, k, log=lambda m: None))
    assert sum(len(s.tables) for s in router.shards) == len(unsplit)
    assert_same(router.transform(queries), want)
    # the comparison is not vacuous: BM25 lists hold ties (the merge must break them as the unsplit index does)
    bm25 = want.lists.scores["bm25:title"]
    assert any(len(s) > 1 and (np.diff(s) == 0).any() for s in bm25)
    assert all(len(r) == 20 for r in want.rows[:-1])


def test_filtered_search_uses_the_whole_catalogues_share(tiny_workspace, queries, tiny_fashion):
    """A category filter raises nprobe by the inverse of the category's share: the global share, on every shard,
    also on a shard that holds none of the category."""
    unsplit = build_tables(tiny_workspace, ANN["ivf-sq8"])
    cats = unsplit.records["category"][:unsplit.n_rows]
    assign = np.where(cats == "Footwear", 0, 1 + np.arange(unsplit.n_rows) % 2)  # all shoes on shard 0
    router = ShardRouter(split(unsplit, 3, assign, log=lambda m: None))
    assert not router.shards[1].tables.has_category("Footwear")
    for category in ("Footwear", "apparel"):
        qs = Queries(queries.query_ids, queries.texts, queries.q, category)
        assert_same(router.transform(qs), HybridRetriever(unsplit).transform(qs))
    with pytest.raises(UnknownCategory, match="unknown category 'Hats'; valid: Accessories, Apparel, Footwear"):
        router.transform(Queries(queries.query_ids, queries.texts, queries.q, "Hats"))


def writes(base):
    """Writes as the service makes them: two new products, one replaced (new text), three removed."""
    from fusionrank.modalities import TABLES

    def product(r, pid, extra):
        rec = {c: v for c, v in base.record(r).items() if c != "modalities"}
        rec["product_id"], rec["title"] = pid, f"{rec['title']} {extra}"
        lex = {f: f"{base.lex_text[f][r] or ''} {extra}".strip() for f in base.lexical}
        vec = {t: (base.emb[t][r] if base.emb_mask[t][r] else None) for t in TABLES}
        return rec, lex, vec

    ids = [str(p) for p in base.ids]
    return [("upsert", product(5, "new-1", "zebra stripes")), ("upsert", product(7, "new-2", "zebra")),
            ("upsert", product(9, ids[9], "quokka")), ("delete", ids[0]), ("delete", ids[11]), ("delete", "new-2")]


def apply(target, ops) -> None:
    for op, arg in ops:
        if op == "upsert":
            target.upsert(*arg)
        else:
            assert target.delete(arg)


def test_writes_through_the_router_equal_the_same_writes_to_one_index(tiny_workspace, queries):
    """New, replaced and removed products: each in its shard, rows from one counter, statistics kept by deltas."""
    from fusionrank.serving.index import SearchIndex

    base = build_tables(tiny_workspace, ANN["ivf-sq8"])
    unsplit = split(base, 1, log=lambda m: None)[0].tables  # an updatable copy (a SearchIndex)
    assert isinstance(unsplit, SearchIndex)
    router = ShardRouter(split(base, 3, log=lambda m: None))
    ops = writes(base)
    apply(unsplit, ops)
    apply(router, ops)
    assert sum(len(s.tables) for s in router.shards) == len(unsplit)
    more = Queries(queries.query_ids + ["z1", "z2"], queries.texts + ["zebra", "quokka shoes"], None)
    more = QueryEncoder().transform(more)
    assert_same(router.transform(more), HybridRetriever(unsplit).transform(more))
    kept = router.stats
    router.refresh()  # the statistics kept by deltas are the shards' own
    assert router.stats == kept


def test_a_saved_shard_loads_back_equal_with_the_writes_since(tiny_workspace, queries, tmp_path):
    unsplit = build_tables(tiny_workspace, ANN["ivf-sq8"])
    shards = split(unsplit, 2, log=lambda m: None)
    dirs = [s.save(tmp_path / f"shard{i}") for i, s in enumerate(shards)]
    loaded = [Shard.load(d, log=lambda m: None) for d in dirs]
    assert_same(ShardRouter(loaded).transform(queries), HybridRetriever(unsplit).transform(queries))
    ops = writes(unsplit)
    apply(ShardRouter(loaded), ops)
    for s in loaded:
        s.tables.close()
    again = ShardRouter([Shard.load(d, log=lambda m: None) for d in dirs])  # as after a restart: logs replayed
    updatable = split(unsplit, 1, log=lambda m: None)[0].tables
    apply(updatable, ops)
    assert again.next_row == updatable.n_rows
    assert_same(again.transform(queries), HybridRetriever(updatable).transform(queries))


@pytest.mark.ray
def test_ray_shards_equal_the_unsplit_catalogue(ray_runtime, tiny_workspace, queries, tmp_path):
    unsplit = build_tables(tiny_workspace, ANN["ivf-sq8"])
    dirs = [s.save(tmp_path / f"shard{i}") for i, s in enumerate(split(unsplit, 2, log=lambda m: None))]
    shards = [RayShard(d) for d in dirs]
    assert sum(s.ready() for s in shards) == len(unsplit)
    router = ShardRouter(shards, unsplit.config.candidates)
    assert_same(router.transform(queries), HybridRetriever(unsplit).transform(queries))
    qs = Queries(queries.query_ids, queries.texts, queries.q, "Footwear")
    assert_same(router.transform(qs), HybridRetriever(unsplit).transform(qs))
    updatable = split(unsplit, 1, log=lambda m: None)[0].tables
    ops = writes(unsplit)
    apply(updatable, ops)
    apply(router, ops)
    assert_same(router.transform(queries), HybridRetriever(updatable).transform(queries))
    for s in shards:
        s.close()


# the whole search over shards: candidates, then the re-rank over the gathered inputs --------------------------

@pytest.fixture(scope="module")
def served(tiny_model):
    """The tiny neural model's serving index (an updatable copy) and ranker."""
    from serving_fixtures import serving_index

    from fusionrank.serving import load_handle

    return serving_index(tiny_model[0], "sq8"), load_handle(tiny_model[0]).ranker


@pytest.fixture(scope="module", params=["neural", "lightgbm"])
def served_by(request, tiny_model, tiny_lgbm_model):
    """The serving index and ranker of the tiny neural model, then of the LightGBM one (its own embedding
    interactions read the tables too)."""
    from serving_fixtures import serving_index

    from fusionrank.serving import load_handle

    model_dir = (tiny_model if request.param == "neural" else tiny_lgbm_model)[0]
    return serving_index(model_dir, "sq8"), load_handle(model_dir).ranker


RANKED_QUERIES = ["red running shoes", "nike", "blue denim jacket for men", "zebra", "leather handbag",
                  "shoes shoes shoes", "watch"]


def assert_same_search(got, want) -> None:
    """Same products in the same order with the same scores, features, weights and explanations."""
    view = got.candidates.catalog
    assert view is not None and view.n_rows <= max(1, sum(len(r) for r in got.candidates.rows))
    gs, ws = got.scored.slates, want.scored.slates
    valid = ws.rows >= 0
    np.testing.assert_array_equal(gs.rows >= 0, valid)
    np.testing.assert_array_equal(view.catalogue_rows[gs.rows[valid]], ws.rows[valid])  # the same candidates, in order
    np.testing.assert_array_equal(gs.x, ws.x)
    np.testing.assert_array_equal(gs.mask, ws.mask)
    np.testing.assert_array_equal(got.scored.scores, want.scored.scores)
    np.testing.assert_array_equal(got.order, want.order)
    assert got.hits == want.hits  # ids, scores, contributions, fusion weights, matched terms, features
    assert want.hits and want.hits[0]["contributions"]  # not vacuous


@pytest.mark.parametrize("k", [2, 3])
def test_a_sharded_search_ranks_as_the_one_index(served_by, k):
    """Router -> gather each shard's candidates' inputs -> the same Featuriser and ranker: the same ranking as
    one index's RankingPipeline.search, with and without a category filter, and after writes through the router."""
    from fusionrank.ranking import RankingPipeline

    index, ranker = served_by
    enc = QueryEncoder()
    one = RankingPipeline.over(split(index, 1, log=lambda m: None)[0].tables, ranker, enc)
    router = ShardRouter(split(index, k, log=lambda m: None))
    sharded = RankingPipeline.over_shards(router, ranker, enc)
    for category in (None, "Footwear"):
        for q in RANKED_QUERIES:
            want = one.search(q, 10, category)
            assert_same_search(sharded.search(q, 10, category), want)
            assert not category or {h["category"] for h in want.hits} == {category}
    ops = writes(index)
    apply(one.catalog, ops)
    apply(router, ops)
    for q in RANKED_QUERIES + ["zebra stripes", "quokka"]:
        got, want = sharded.search(q, 10), one.search(q, 10)
        assert_same_search(got, want)
    assert "new-1" in [h["product_id"] for h in sharded.search("zebra stripes", 10).hits]


def test_a_batch_of_sharded_queries_gets_the_one_index_features(served, queries):
    """Many queries at once (candidates shared between queries appear once in the view): the same slates and scores."""
    from fusionrank.ranking import Featuriser, Scorer
    from fusionrank.serving.shards import ShardSearch

    index, ranker = served
    want_c = HybridRetriever(index).transform(queries)
    want = Featuriser(index).transform(want_c)
    cands = ShardSearch(ShardRouter(split(index, 3, log=lambda m: None))).transform(queries)
    view = cands.catalog
    assert view.n_rows == len(np.unique(np.concatenate(want_c.rows)))  # the view holds the candidates only
    got = Featuriser().transform(cands)
    np.testing.assert_array_equal(np.where(got.rows >= 0, view.catalogue_rows[got.rows], -1), want.rows)
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(Scorer(ranker, view).transform(got).scores, Scorer(ranker, index).transform(want).scores)


@pytest.mark.ray
def test_a_sharded_search_over_ray_shards_ranks_as_the_one_index(ray_runtime, served, tmp_path):
    """The same, with the shards in Ray actors (each returns its candidates' inputs from its own process)."""
    from fusionrank.ranking import RankingPipeline

    index, ranker = served
    enc = QueryEncoder()
    one = RankingPipeline.over(split(index, 1, log=lambda m: None)[0].tables, ranker, enc)
    dirs = [s.save(tmp_path / f"shard{i}") for i, s in enumerate(split(index, 2, log=lambda m: None))]
    shards = [RayShard(d) for d in dirs]
    assert sum(s.ready() for s in shards) == len(index)
    router = ShardRouter(shards, index.config.candidates)
    sharded = RankingPipeline.over_shards(router, ranker, enc)
    for category in (None, "Footwear"):
        for q in RANKED_QUERIES:
            assert_same_search(sharded.search(q, 10, category), one.search(q, 10, category))
    ops = writes(index)
    apply(one.catalog, ops)
    apply(router, ops)
    for q in RANKED_QUERIES + ["zebra stripes", "quokka"]:
        assert_same_search(sharded.search(q, 10), one.search(q, 10))
    for s in shards:
        s.close()


def test_a_query_without_candidates_gathers_an_empty_view(served):
    """No candidates anywhere (no shard is asked): the slate is padding only and every score -inf, as over one index."""
    from dataclasses import replace

    from fusionrank.ranking import Featuriser, Scorer

    index, ranker = served
    router = ShardRouter(split(index, 2, log=lambda m: None))
    cands, parts = router.candidates(QueryEncoder().transform(Queries.of(["zebra"])))
    none = replace(cands, rows=[np.zeros(0, np.int64)], scores=[np.zeros(0)])
    got = router.gather(none, parts)
    assert got.catalog.n_rows == 1 and not got.catalog.live.any()
    slates = Featuriser().transform(got)
    want = Featuriser(index).transform(replace(HybridRetriever(index).transform(none.queries), rows=none.rows))
    np.testing.assert_array_equal(slates.rows, want.rows)
    np.testing.assert_array_equal(slates.x, want.x)
    assert np.isneginf(Scorer(ranker, got.catalog).transform(slates).scores).all()
