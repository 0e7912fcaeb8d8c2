"""Simulated shoppers through the real service path: in process, over HTTP, and with cached result lists."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fusionrank.feedback.clickmodels import PositionBased, PowerLawExamination
from fusionrank.feedback.propensity import estimate_from_swaps
from fusionrank.feedback.simulate import HttpShop, ServiceShop, Shoppers, zipf_weights


def _shoppers(tiny_fashion, seed=0):
    return Shoppers(tiny_fashion.queries["train"], tiny_fashion.qrels["train"], PositionBased(PowerLawExamination(1.0)),
                    k=8, seed=seed)


def test_zipf_weights_are_skewed_and_sum_to_one():
    w = zipf_weights(100, 1.0)
    assert w.sum() == pytest.approx(1.0) and w[0] / w[9] == pytest.approx(10.0)


def test_live_shoppers_search_and_post_through_the_service(service_factory, tiny_fashion):
    svc = service_factory("shop-live")
    rep = _shoppers(tiny_fashion).run_live(ServiceShop(svc), 60, batch=7)
    counts = svc.events.counts()
    assert counts["queries"] == 60
    log = svc.events.click_log()
    assert log["click"].sum() == rep.actions["click"] > 0
    assert (log["add_to_cart"] <= log["click"]).all() and (log["purchase"] <= log["add_to_cart"]).all()
    assert rep.actions["purchase"] <= rep.actions["add_to_cart"] <= rep.actions["click"]
    svc.close()


def test_http_shoppers_use_the_events_key_like_the_page(service_factory, tiny_fashion):
    from fusionrank.serving.http.app import create_app

    svc = service_factory("shop-http")
    with TestClient(create_app(svc, "admin-k", "events-k", events_rate=1000, events_burst=1000)) as c:
        rep = _shoppers(tiny_fashion, seed=3).run_live(HttpShop(c, "events-k"), 20, batch=5)
    assert svc.events.counts()["queries"] == 20
    assert sum(1 for e in svc.events.iter_events()) == sum(rep.actions.values())


def test_cached_sessions_log_every_search_and_recover_the_propensities(service_factory, tiny_fashion):
    """20,000 sessions, half of them randomised by the service's own swap: the swaps estimate PBM's theta_k = 1/k."""
    svc = service_factory("shop-cached")
    svc.randomise_share = 0.5
    rep = _shoppers(tiny_fashion, seed=1).run_cached(svc, 20_000, chunk=5_000, log=None)
    assert svc.events.counts()["queries"] == 20_000
    assert rep.distinct_lists <= len(tiny_fashion.queries["train"])
    assert 0.45 < rep.randomised / 20_000 < 0.55
    log = svc.events.click_log()
    assert len(log) == 20_000 * 8 and log["randomised"].mean() == pytest.approx(rep.randomised / 20_000)
    theta = estimate_from_swaps(log, ranks=8).relative().theta
    np.testing.assert_allclose(theta, 1.0 / np.arange(1, 9), rtol=0.25)  # 20k sessions over 24 queries: a loose check
    # every logged search reproduces its result list and positions
    one = log[log["query_id"] == log["query_id"].iloc[0]].sort_values("rank")
    assert one["rank"].tolist() == list(range(1, 9)) and sorted(one["logged_rank"]) == list(range(1, 9))
    svc.close()


def test_cached_sessions_explore_as_the_service_does(service_factory, tiny_fashion):
    """Explored sessions show one candidate from ranks k+1..depth at a random position; swaps still estimate theta."""
    from fusionrank.feedback.labels import ips

    svc = service_factory("shop-explore")
    svc.randomise_share, svc.explore_share, svc.explore_depth = 0.3, 0.5, 16
    rep = _shoppers(tiny_fashion, seed=2).run_cached(svc, 12_000, chunk=4_000, log=None)
    log = svc.events.click_log()
    assert len(log) == 12_000 * 8
    per_search = log.groupby("query_id").agg(deep=("logged_rank", lambda r: int((r > 8).sum())),
                                             randomised=("randomised", "first"))
    explored = per_search["deep"] == 1
    assert (per_search["deep"] <= 1).all() and not (explored & per_search["randomised"]).any()
    assert 0.3 < explored.mean() < 0.4  # half of the 70% not randomised
    assert log.loc[log["logged_rank"] > 8, "logged_rank"].between(9, 16).all()
    assert log.loc[log["logged_rank"] > 8, "rank"].nunique() == 8  # at every position of the page
    theta = estimate_from_swaps(log, ranks=8).relative().theta
    np.testing.assert_allclose(theta, 1.0 / np.arange(1, 9), rtol=0.3)
    # an explored product gets a click label like any shown one (its clicks over its position's propensity)
    labels = ips(log, estimate_from_swaps(log, ranks=8))
    deep = log[log["logged_rank"] > 8][["user_query", "product_id"]].drop_duplicates()
    assert len(labels.merge(deep, on=["user_query", "product_id"])) == len(deep) > 0
    svc.close()


def test_cached_sessions_explore_several_positions_as_the_service_does(service_factory, tiny_fashion):
    svc = service_factory("shop-explore-many")
    svc.randomise_share, svc.explore_share, svc.explore_depth, svc.explore_count = 0.0, 0.5, 16, 3
    _shoppers(tiny_fashion, seed=3).run_cached(svc, 3_000, chunk=3_000, log=None)
    log = svc.events.click_log()
    deep = log.groupby("query_id")["logged_rank"].agg(lambda r: int((r > 8).sum()))
    assert set(deep.unique()) == {0, 3} and 0.4 < (deep == 3).mean() < 0.6
    assert log.groupby("query_id")["product_id"].nunique().eq(8).all()  # no product shown twice
    assert log.loc[log["logged_rank"] > 8, "logged_rank"].between(9, 16).all()
    svc.close()


def test_cached_sessions_interleave_as_the_service_does(service_factory, tiny_fashion, tiny_lgbm_model):
    """With a candidate interleaving on every search, the bulk sessions log exactly the lists, teams and features the
    service itself logs for the same queries and the same draws."""
    from collections import Counter

    from fusionrank.feedback.interleave import interleaving_report
    from fusionrank.serving.service import load_handle

    bulk, live = service_factory("il-bulk"), service_factory("il-live")
    for svc in (bulk, live):
        svc.set_interleaving([load_handle(tiny_lgbm_model[0])], 1.0)
    shoppers = _shoppers(tiny_fashion, seed=4)
    rep = shoppers.run_cached(bulk, 400, chunk=150, log=None, seed=11)
    assert rep.interleaved == 400 and rep.randomised == 0
    live.reseed(11)  # the service draws each search's candidate and coin as the bulk sessions did, in the same order
    for qi in shoppers.draw(400, np.random.default_rng(11)):
        res = live.search(shoppers.queries.at[qi, "query"], k=8, explain=False)
        assert res["interleaved"]

    def logged(svc):
        return Counter((q["user_query"], tuple(q["product_ids"]), tuple(q["teams"]), q["interleaved_with"], q["slate_key"])
                       for q in svc.events.iter_queries())

    got, want = logged(bulk), logged(live)
    assert got == want and sum(got.values()) == 400
    assert len({key[1:3] for key in got}) > len(shoppers.queries)  # the coins differ between sessions of one query
    (r,) = interleaving_report(bulk.events)
    assert r.searches == 400 and r.used == r.wins + r.losses + r.ties > 0
    assert bulk.events.click_log().empty  # interleaved searches stay out of click training
    bulk.close()
    live.close()


def test_cached_sessions_interleave_a_share_and_explore_the_rest(service_factory, tiny_fashion, tiny_lgbm_model):
    from fusionrank.serving.service import load_handle

    svc = service_factory("il-share")
    svc.randomise_share, svc.explore_share, svc.explore_depth = 0.2, 0.5, 16
    svc.set_interleaving([load_handle(tiny_lgbm_model[0])], 0.3)
    rep = _shoppers(tiny_fashion, seed=5).run_cached(svc, 3_000, chunk=1_000, log=None)
    assert 0.25 < rep.interleaved / 3_000 < 0.35 and len(svc.events.interleaving_log()) == rep.interleaved
    log = svc.events.click_log()
    assert log["query_id"].nunique() == 3_000 - rep.interleaved
    assert 0.15 < log.groupby("query_id")["randomised"].first().mean() < 0.25
    svc.close()


def test_cached_lists_are_kept_across_runs_until_the_service_changes(service_factory, tiny_fashion, tiny_lgbm_model):
    from fusionrank.serving.service import load_handle

    svc = service_factory("keep")
    shoppers = _shoppers(tiny_fashion, seed=6)
    first = shoppers.run_cached(svc, 2_000, log=None, seed=1)
    assert first.searched == first.distinct_lists > 0
    assert shoppers.run_cached(svc, 2_000, log=None, seed=2).searched == 0  # the same model, index and settings
    svc.set_interleaving([load_handle(tiny_lgbm_model[0])], 0.5)  # a candidate: each query is searched again once
    again = shoppers.run_cached(svc, 2_000, log=None, seed=3)
    assert again.searched == again.distinct_lists and again.interleaved > 0
    assert shoppers.run_cached(svc, 2_000, log=None, seed=4).searched == 0
    svc.put_product({**svc.product(svc.index.ids[0]), "title": "a renamed product"})  # a new index version
    assert shoppers.run_cached(svc, 2_000, log=None, seed=5).searched > 0
    svc.close()
