"""Logged slates: randomised swaps, the swap draw, and rebuilding the ranker's inputs (pure parts; the served
round trip is in tests/serving/test_feature_logging.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.feedback.logged import draw_exploration, draw_swap, explore_positions, rebuild_slates, swapped
from fusionrank.feedback.schema import ServedSlate, grid_cell, slate_key, vector_key


def _slate(n=4):
    return ServedSlate([f"p{i}" for i in range(n)], np.arange(n, 0, -1, dtype=np.float32), np.eye(n, 10, dtype=np.float32),
                       np.ones((n, 3), bool), np.full(8, 0.5, np.float32), [f"k{i}" for i in range(n)], list(range(1, n + 1)))


def test_swapped_exchanges_the_top_with_one_position_and_keeps_the_logged_ranks():
    s = swapped(_slate(), 2)
    assert s.product_ids == ["p2", "p1", "p0", "p3"] and s.logged_ranks == [3, 2, 1, 4]
    assert s.scores.tolist() == [2.0, 3.0, 4.0, 1.0] and s.features[0, 2] == 1.0 and s.vector_keys[0] == "k2"
    assert swapped(_slate(), None).product_ids == ["p0", "p1", "p2", "p3"]
    with pytest.raises(FusionrankError, match="outside the slate"):
        swapped(_slate(), 4)


def test_draw_swap_share_and_uniform_positions():
    rng = random.Random(0)
    draws = [draw_swap(rng, 0.3, 10) for _ in range(20000)]
    hit = [d for d in draws if d is not None]
    assert 0.28 < len(hit) / len(draws) < 0.32 and set(hit) == set(range(1, 10))
    assert draw_swap(rng, 0.0, 10) is None and draw_swap(rng, 1.0, 1) is None


def test_rebuild_slates_indexes_one_table_row_per_vector_key():
    a, b = _slate(3), swapped(_slate(3), 1)
    vec = {f"k{i}": [np.full(4, i, np.float32), np.full(2, -i, np.float32), np.zeros(3, np.float32)] for i in range(3)}
    sl, tables = rebuild_slates([a, b], vec, ["s1", "s2"], ["q", "q"])
    assert sl.rows.shape == (2, 3) and tables["title"].shape == (3, 4)
    assert [tables["title"][r][0] for r in sl.rows[1]] == [1.0, 0.0, 2.0]  # shown order of the swapped slate
    assert np.array_equal(sl.x[1], b.features) and np.array_equal(sl.q[0], a.query_vector)
    with pytest.raises(FusionrankError, match="vectors are missing"):
        rebuild_slates([a], {"k0": vec["k0"]})


def test_keys_are_content_keys():
    assert slate_key(_slate(), "m1") == slate_key(_slate(), "m1") != slate_key(_slate(), "m2")
    assert slate_key(swapped(_slate(), 1), "m1") != slate_key(_slate(), "m1")
    r = [np.ones(3, np.float32), np.zeros(2, np.float32)]
    assert vector_key(r) == vector_key([x.copy() for x in r]) != vector_key([r[0] * 2, r[1]])
    assert grid_cell(np.array([1, 4, 5, 10]), 4)[0].tolist() == [1, 1, 2, 3]


def test_draw_exploration_is_uniform_over_positions_and_deeper_ranks():
    rng = random.Random(0)
    draws = [draw_exploration(rng, 0.5, 4, 10) for _ in range(8000)]
    hits = [d for d in draws if d is not None]
    assert 0.47 < len(hits) / len(draws) < 0.53
    assert all(len(d) == 1 for d in hits)  # one explored position by default
    js, ms = np.array([d[0][0] for d in hits]), np.array([d[0][1] for d in hits])
    assert set(js) == {0, 1, 2, 3} and set(ms) == set(range(4, 10))
    assert np.bincount(js).min() > 0.2 * len(hits) and np.bincount(ms)[4:].min() > 0.13 * len(hits)
    assert draw_exploration(rng, 1.0, 4, 4) is None and draw_exploration(rng, 0.0, 4, 10) is None  # nothing below the page / off
    assert explore_positions(4, ((2, 7),)).tolist() == [0, 1, 7, 3] and explore_positions(3, None).tolist() == [0, 1, 2]
    with pytest.raises(FusionrankError, match="below 4"):
        explore_positions(4, ((1, 2),))


def test_draw_exploration_of_several_positions_draws_distinct_positions_and_ranks():
    rng = random.Random(1)
    draws = [draw_exploration(rng, 1.0, 10, 50, count=3) for _ in range(4000)]
    assert all(len(d) == 3 for d in draws)
    for d in draws:
        js, ms = [j for j, _ in d], [m for _, m in d]
        assert len(set(js)) == 3 and len(set(ms)) == 3 and all(0 <= j < 10 for j in js) and all(10 <= m < 50 for m in ms)
        shown = explore_positions(10, d)
        assert len(set(shown.tolist())) == 10 and (shown >= 10).sum() == 3
        assert all(shown[j] == m for j, m in d)
    js = np.concatenate([[j for j, _ in d] for d in draws])
    ms = np.concatenate([[m for _, m in d] for d in draws])
    assert np.bincount(js, minlength=10).min() > 0.8 * len(js) / 10  # every position and every deeper rank, evenly
    assert np.bincount(ms, minlength=50)[10:].min() > 0.7 * len(ms) / 40
    # fewer candidates below the page than asked: as many as there are
    assert len(draw_exploration(rng, 1.0, 4, 6, count=3)) == 2
    with pytest.raises(FusionrankError, match="explore_count"):
        draw_exploration(rng, 1.0, 4, 10, count=0)
    with pytest.raises(FusionrankError, match="distinct"):
        explore_positions(4, ((1, 7), (1, 8)))
    with pytest.raises(FusionrankError, match="distinct"):
        explore_positions(4, ((1, 7), (2, 7)))


def test_the_archive_caches_each_rows_vector_key_of_a_catalogue_and_of_a_view():
    """Keys are computed once per row and kept as bytes; a view's rows are keyed by the catalogue rows they hold."""
    from types import SimpleNamespace

    from fusionrank.feedback.logged import VectorArchive
    from fusionrank.modalities import TABLES

    rng = np.random.default_rng(0)
    n = 2500  # beyond the first block of cached keys
    emb = {t: rng.normal(size=(n, 4)).astype(np.float32) for t in TABLES}
    whole = SimpleNamespace(emb=emb)
    arc = VectorArchive()
    want = [vector_key([emb[t][r] for t in TABLES]) for r in range(n)]
    assert [arc.key(whole, r) for r in (2400, 0, 7, 2499)] == [want[2400], want[0], want[7], want[2499]]
    emb[TABLES[0]][7] += 1  # rows are never rewritten in place: the cached key stands
    assert arc.key(whole, 7) == want[7] and isinstance(arc.key(whole, 7), str)
    rows = np.array([5, 1300, 2450])
    view = SimpleNamespace(emb={t: emb[t][rows] for t in TABLES}, catalogue_rows=rows)
    assert [arc.key(view, i) for i in range(3)] == [vector_key([emb[t][r] for t in TABLES]) for r in rows]
    other = SimpleNamespace(emb={t: np.zeros((3, 4), np.float32) for t in TABLES}, catalogue_rows=rows)
    assert [arc.key(other, i) for i in range(3)] == [want[5], want[1300], want[2450]]  # cached by catalogue row
