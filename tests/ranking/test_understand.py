"""Query understanding: unseen words mapped to the ranker's terms through real WordNet and the real query encoder."""
from __future__ import annotations

import pytest

from fusionrank.errors import FusionrankError
from fusionrank.ranking.understand import COMPONENTS, QueryUnderstanding, Verbatim, edits1, singular_forms

TRAINING = ["black shoes for men", "red tops for women", "sunglasses for men", "puma black shoes", "blue watches",
            "women handbags", "men watches", "white shoes"]
# how many catalogue titles use each word (the live BM25 title field in real use)
DOC_FREQ = {"black": 90, "shoes": 80, "men": 70, "red": 50, "tops": 40, "women": 60, "sunglasses": 30, "puma": 25,
            "blue": 45, "watches": 35, "handbags": 20, "white": 50, "purse": 40, "moccasins": 1, "ladies": 5}


@pytest.fixture(scope="module")
def qu(encoder) -> QueryUnderstanding:
    return QueryUnderstanding.build(TRAINING, lambda t: DOC_FREQ.get(t, 0), lambda t: encoder.encode(t)[0])


def targets_of(u):
    return {m.source: m.target for m in u.mappings}


def test_training_queries_are_left_exactly_as_typed(qu):
    for q in TRAINING + ["Black Shoes for Men"]:
        u = qu.understand(q)
        assert not u.changed and u.rewritten == q.strip() and not u.mappings


@pytest.mark.parametrize("query, source, target, via", [
    ("tan moccasins", "moccasins", "shoes", "wordnet: kind of"),        # a moccasin is a kind of shoe
    ("men's specs", "specs", "sunglasses", "wordnet: broader term"),   # sunglasses are spectacles (specs)
    ("crimson tops", "crimson", "red", "wordnet: synonym"),            # crimson is a red
    ("gents watches", "gents", "men", "wordnet: kind of a kind of"),   # gent -> gentleman -> man
    ("shades for men", "shades", "sunglasses", "wordnet: synonym"),
    ("blakc shoes", "blakc", "black", "spelling"),
])
def test_unseen_words_map_to_terms_the_ranker_trained_on(qu, query, source, target, via):
    u = qu.understand(query)
    m = {x.source: x for x in u.mappings}[source]
    assert (m.target, m.via) == (target, via)
    assert target in u.rewritten.split()
    assert m.target in qu.known  # always a word of the training queries


def test_a_word_the_catalogue_uses_stays_beside_its_target(qu):
    u = qu.understand("tan moccasins")  # one catalogue title says "moccasins": keep its exact match
    assert u.rewritten == "tan moccasins shoes" and u.mappings[0].kept
    u = qu.understand("men's specs")  # no title says "specs": replaced
    assert u.rewritten == "men's sunglasses" and not u.mappings[0].kept


def test_connecting_words_the_ranker_never_saw_are_dropped(qu):
    u = qu.understand("show me black shoes for men please")
    assert u.rewritten == "black shoes for men"
    assert u.dropped == ["show", "me", "please"]


def test_frequent_catalogue_words_map_only_to_synonyms(qu):
    # "purse" is in 40 titles: only an exact synonym may be added (handbag is one)
    u = qu.understand("women purse")
    assert targets_of(u) == {"purse": "handbags"} and u.mappings[0].via == "wordnet: synonym"


def test_words_with_no_meaning_in_the_shop_are_left_alone(qu):
    for q in ("xyzzy shoes", "lotus watches"):  # no sense of "lotus" is something a shop sells
        u = qu.understand(q)
        assert u.mappings == [] and u.rewritten.split()[0] == q.split()[0]


def test_save_and_load_give_the_same_rewrites(qu, tmp_path, encoder):
    qu.save(tmp_path)
    back = QueryUnderstanding.load(tmp_path, doc_freq=lambda t: DOC_FREQ.get(t, 0), embed=lambda t: encoder.encode(t)[0])
    for q in ("tan moccasins", "men's specs", "crimson tops for ladies", "show me blue watches", "black shoes for men"):
        assert back.understand(q) == qu.understand(q)
    assert QueryUnderstanding.load(tmp_path / "nothing") is None


def test_components_switch_off_and_name_the_valid_ones(qu):
    try:
        qu.components = [c for c in COMPONENTS if c != "lexicon"]
        assert "wordnet" not in " ".join(m.via for m in qu.understand("men's specs").mappings)
        qu.components = [c for c in COMPONENTS if c != "spelling"]
        assert qu.understand("blakc shoes").mappings == []
        with pytest.raises(FusionrankError, match="valid: .*lexicon"):
            qu.components = ["lexicon", "thesaurus"]
    finally:
        qu.components = COMPONENTS


def test_the_cache_keeps_the_most_recently_used_queries_and_no_more(qu, monkeypatch):
    import fusionrank.ranking.understand as understand

    monkeypatch.setattr(understand, "CACHE_SIZE", 3)
    qu.components = COMPONENTS  # clears the cache
    first = qu.understand("tan moccasins")
    crimson = qu.understand("crimson tops")
    qu.understand("men's specs")
    assert qu.understand("tan moccasins") is first  # a hit, and now the most recently used
    qu.understand("blue watches")  # one too many: the least recently used ("crimson tops") goes
    assert list(qu._cache) == ["men's specs", "tan moccasins", "blue watches"]
    again = qu.understand("crimson tops")
    assert again is not crimson and again == crimson  # understood afresh, alike
    assert len(qu._cache) == 3


def test_verbatim_is_the_identity():
    assert Verbatim().understand(" men's specs ").rewritten == "men's specs"


def test_word_forms():
    assert singular_forms("dresses") == ["dresses", "dress", "dresse"]
    assert "watches" in singular_forms("watches") and "watch" in singular_forms("watches")
    assert "black" in edits1("balck")  # a transposition
    assert "black" in edits1("blakc") and "shoes" in edits1("shoess")


def test_the_pipeline_rewrites_before_encoding_and_training_slates_do_not_change(tables, encoder):
    from fusionrank.modalities import modality
    from fusionrank.ranking import RankingPipeline

    train = ["black shirt for men", "red dress for women"]
    u = QueryUnderstanding.build(train, tables.lexical[modality("text").lexical].doc_freq, lambda t: encoder.encode(t)[0])
    plain = RankingPipeline.over(tables, None, encoder)
    smart = RankingPipeline.over(tables, None, encoder, understanding=u)
    a, b = plain.slates(["a", "b"], train), smart.slates(["a", "b"], train)
    assert (a.rows == b.rows).all() and (a.x == b.x).all()
    c = smart.slates(["c"], ["show me black shirt for gents"])
    d = plain.slates(["d"], ["black shirt for men"])
    assert c.queries == ["black shirt for men"] and (c.rows == d.rows).all() and (c.x == d.x).all()
