"""A service following a model registry: interleaving a candidate, then serving it once promoted, under concurrent searches."""
from __future__ import annotations

import threading
import time

import httpx

from fusionrank.serving.app import create_app

QUERIES = ["black tshirt", "red shoes", "puma women watch", "blue jeans", "nike men tshirt", "green watch"]


def _wait(pred, seconds: float = 30.0) -> None:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < seconds, "timed out"
        time.sleep(0.02)


def test_service_follows_interleaving_and_promotion_under_concurrent_searches(service_factory, tiny_model, tiny_lgbm_model,
                                                                              live_server, tmp_path):
    from fusionrank.feedback.interleave import interleaving_report
    from fusionrank.models import ModelRegistry, PromotionPolicy
    from fusionrank.serving import load_handle
    from fusionrank.serving.follow import RegistryFollower

    reg = ModelRegistry.create(tmp_path / "reg", PromotionPolicy(interleave_share=0.5))
    v1 = reg.register(tiny_model[0])
    v2 = reg.register(tiny_lgbm_model[0])
    svc = service_factory("follow")
    messages: list[str] = []
    follower = RegistryFollower(svc, reg, poll_seconds=0.05, log=messages.append).start()
    assert svc.model.version == v1.model_version and svc.interleaving[0] == ()
    responses: list[dict] = []
    failures: list = []
    stop = threading.Event()

    with live_server(create_app(svc, "admin", "ev")) as srv:
        def client(i):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                n = 0
                while not stop.is_set():
                    r = c.get("/search", params={"q": QUERIES[(i + n) % len(QUERIES)], "k": 6, "explain": n % 2 == 0})
                    n += 1
                    if r.status_code != 200 or len(r.json()["results"]) != 6:
                        failures.append((r.status_code, r.text[:200]))
                    else:
                        responses.append(r.json())

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        _wait(lambda: len(responses) > 20)
        reg.set_state("v2", "interleaving", actor="test")
        _wait(lambda: sum(r["interleaved"] for r in responses) >= 20)
        reg.set_state("v2", "promoted", actor="test")
        _wait(lambda: svc.model.version == v2.model_version)
        n_at_promotion = len(responses)
        _wait(lambda: len(responses) > n_at_promotion + 30)
        stop.set()
        for t in threads:
            t.join()
        metrics = httpx.get(srv.url + "/metrics").text
    follower.stop()

    assert failures == []
    versions = [r["model_version"] for r in responses]
    assert versions[0] == v1.model_version and versions[-1] == v2.model_version
    first_v2 = versions.index(v2.model_version)
    assert set(versions[first_v2 + 10:]) == {v2.model_version}  # once promoted, only v2 ranks (in-flight ones finish on v1)
    assert not any(r["interleaved"] for r in responses[first_v2 + 10:])  # v2 is no longer a candidate
    assert svc.interleaving[0] == ()
    assert "fusionrank_model_swaps_total 1.0" in metrics and f'fusionrank_model_info{{version="{v2.model_version}"}} 1.0' in metrics
    assert any("serving v2" in m for m in messages)

    # the interleaved searches are in the store with one team per shown product, drafted from both rankings
    log = svc.events.interleaving_log()
    assert len(log) >= 20 and all(s["model_version"] == v1.model_version and s["interleaved_with"] == v2.model_version
                                  for s in log)
    a_handle, b_handle = load_handle(tiny_model[0]), load_handle(tiny_lgbm_model[0])
    by_id = {r["search_id"]: r for r in responses}
    for s in log[:10]:
        r = by_id[s["query_id"]]
        assert [h["product_id"] for h in r["results"]] == s["product_ids"] and len(s["teams"]) == 6
        assert abs(s["teams"].count("a") - s["teams"].count("b")) <= 1
        for team, h in (("a", a_handle), ("b", b_handle)):  # each team's picks keep its ranker's order
            order = [x["product_id"] for x in svc.pipeline.search(r["query"], 200, None, False, ranker=h.ranker).hits]
            picked = [p for p, t in zip(s["product_ids"], s["teams"]) if t == team]
            assert [order.index(p) for p in picked] == sorted(order.index(p) for p in picked)
    # shoppers' clicks on interleaved searches are credited to the teams
    clicks = [{"type": "click", "search_id": s["query_id"], "model_version": s["model_version"],
               "product_id": s["product_ids"][s["teams"].index("b")], "position": s["teams"].index("b") + 1} for s in log]
    svc.record_events(clicks, require_known=True)
    (rep,) = interleaving_report(svc.events)
    assert (rep.control, rep.candidate) == (v1.model_version, v2.model_version)
    assert rep.wins == rep.used == len(log) and rep.losses == 0 and rep.ci[0] > 0
    # and click training leaves them out
    assert svc.events.click_log()["query_id"].isin([s["query_id"] for s in log]).sum() == 0
    svc.close()


def test_auto_policy_the_service_promotes_a_preferred_candidate(service_factory, tiny_model, tiny_lgbm_model, tmp_path):
    """With ``mode = "auto"`` the follower runs the gate over the service's own event store and promotes by itself."""
    from fusionrank.models import ModelRegistry, PromotionPolicy, offline_comparison
    from fusionrank.serving.follow import RegistryFollower

    reg = ModelRegistry.create(tmp_path / "reg", PromotionPolicy(mode="auto", interleave_share=1.0, min_searches=30,
                                                                  tolerance=1.0, check_seconds=0.01))
    reg.register(tiny_model[0])
    off = offline_comparison(tiny_lgbm_model[0], tiny_model[0], baseline_id="v1", log=lambda m: None)
    reg.register(tiny_lgbm_model[0], parent="v1", offline=off)
    reg.set_state("v2", "interleaving", actor="test")
    svc = service_factory("auto")
    follower = RegistryFollower(svc, reg, log=lambda m: None)
    follower.sync()
    assert [h.version for h in svc.interleaving[0]] == [reg.read().find("v2").model_version]
    # shoppers who click the candidate's products only
    for i in range(40):
        res = svc.search(QUERIES[i % len(QUERIES)], k=6, explain=False)
        assert res["interleaved"]
        stored = svc.events.interleaving_log()[-1]
        assert stored["query_id"] == res["search_id"]
        j = stored["teams"].index("b")
        svc.record_events([{"type": "click", "search_id": res["search_id"], "model_version": res["model_version"],
                            "product_id": res["results"][j]["product_id"], "position": j + 1}], require_known=True)
    time.sleep(0.02)
    follower.sync()  # runs the gate: promotes v2
    idx = reg.read()
    assert idx.promoted().id == "v2" and follower.decisions == 1
    d = idx.decisions[-1]
    assert (d.version, d.action, d.actor) == ("v2", "promote", "auto (service)")
    assert d.evidence["interleaving"]["wins"] == 40 and d.evidence["verdict"] == "promote"
    follower.sync()  # and serves it
    assert svc.model.version == idx.find("v2").model_version and svc.interleaving[0] == ()
    assert svc.stats()["interleaving"] == {"candidates": [], "share": 1.0}
    svc.close()
