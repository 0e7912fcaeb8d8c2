"""``fusionrank loop``: shoppers -> events -> a retrained model -> an online comparison -> promotion -> served.

:func:`run_loop` runs every step through the real parts, in one process:

1. **serve**: the search service over a model directory's index, ranking with the registry's promoted
   version (:func:`~fusionrank.serving.build.open_service`), following the registry
   (:class:`~fusionrank.serving.follow.RegistryFollower`), on HTTP on loopback;
2. **simulate**: simulated shoppers (:class:`~fusionrank.feedback.simulate.Shoppers`, a click model by
   name) search and post events through the HTTP API with the events key, as the web page does; the
   service randomises ``randomise_share`` of the searches it does not interleave (the top result swapped
   with one drawn uniformly from ranks 2..k, Joachims et al. 2017), which identifies the position bias,
   and explores ``explore_share`` of the others (``explore_count`` random positions show candidates it ranked
   k+1..``explore_depth``, :func:`~fusionrank.feedback.logged.draw_exploration`), so a retraining sees
   clicks on products the promoted version keeps below the page.
   With ``simulate="cached"`` the sessions before retraining are drawn in bulk instead
   (:meth:`~fusionrank.feedback.simulate.Shoppers.run_cached`: one real search of the service per distinct
   query, with the promoted version and its query understanding, every session its own search record,
   randomisation drawn as the service draws it, events through the service's own checks into its store),
   which takes 10^5 sessions in about a minute; the interleaved sessions go through HTTP too unless
   ``interleave_simulate="cached"``, where each batch is drawn in bulk the same way, with the service's
   team drafts (the lists, teams and logged features the service itself logs for the same draws);
3. **retrain**: a candidate from the logged searches (``train_on``: ``all`` of them so far, or this
   ``round``'s), with position bias estimated from the randomised searches (``propensity="swaps"``)
   (:func:`~fusionrank.models.retrain.retrain`), measured offline beside the promoted version; one that
   regresses offline is retired unseen;
4. **interleave**: the candidate goes to ``interleaving``; the service interleaves it on the policy's
   share of searches while the shoppers keep shopping, batch after batch, until the gate decides;
5. **promote**: :func:`~fusionrank.models.gate.decide` promotes it (the service swaps it in at its
   next poll) or retires it, recording the evidence; a candidate still undecided after
   ``max_interleave_sessions`` is retired.

Each round reports the promoted version's NDCG@10 on the evaluation queries and the sessions used.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .gate import PromotionPolicy, decide, start_interleaving
from .registry import ModelRegistry
from .retrain import retrain

__all__ = ["run_loop", "RoundReport", "TRAIN_ON"]

#: What each retraining reads: every search logged so far (all rounds, all promoted versions; IPS labels
#: with rank propensities stay unbiased whatever mix of rankers logged them), or this round's only.
TRAIN_ON = ("all", "round")
#: How the sessions before each retraining reach the service: every one through the HTTP API, or in bulk.
SIMULATE = ("http", "cached")


@dataclass
class RoundReport:
    """What one round did."""

    round: int
    candidate: str | None
    outcome: str                    # promoted | refused offline | refused online | undecided
    promoted: str                   # the promoted version after the round
    promoted_ndcg: float | None     # its NDCG@10 (policy metric) on the evaluation queries
    candidate_ndcg: float | None
    sessions_logged: int            # sessions of this round before retraining
    searches_trained: int | None    # logged searches the candidate was trained on (train_on="all": every round's)
    sessions_interleaving: int      # sessions while the candidate was interleaved
    preference: float | None
    ci: list[float] | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wait(pred, seconds: float, what: str) -> None:
    from ..errors import FusionrankError

    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > seconds:
            raise FusionrankError(f"the service did not {what} within {seconds:.0f} s")
        time.sleep(0.05)


def run_loop(model_dir: str | Path, registry_dir: str | Path, *, rounds: int = 3, sessions: int = 2000,
             interleave_batch: int = 500, max_interleave_sessions: int = 20_000, click_model: str = "pbm", k: int = 10,
             labels: str = "ips", propensity: str = "swaps", randomise_share: float = 0.1, train_on: str = "all",
             explore_share: float = 0.0, explore_depth: int = 50, explore_count: int = 1,
             dm_regressor: str = "ridge", logging_scores: bool = False,
             loss: str | None = "ips_listwise", judgments_weight: float = 0.0,
             epochs: int | None = None, policy: PromotionPolicy | None = None, seed: int = 0, simulate: str = "http",
             interleave_simulate: str = "http", serve_forever: bool = False,
             port: int = 0, log=print) -> list[RoundReport]:
    """Run ``rounds`` rounds of the loop (see the module docstring) over ``model_dir``'s catalogue and index.

    The registry is created (``policy``, default :class:`PromotionPolicy`) with ``model_dir`` as its
    promoted first version when it does not exist; otherwise the loop continues from its promoted
    version. The event store is ``REGISTRY/service-data/events.sqlite``. With ``propensity="swaps"``
    (the default) ``randomise_share`` must be above 0: without randomised searches the bias is not
    identified from one logging model, and retraining would stop with an error saying so. With
    ``labels="dr"`` the direct method is ``dm_regressor``; with ``logging_scores`` it also reads the scores
    of the promoted version that served the round (its ``logging_model``).
    """
    import httpx

    from ..experiment import split_frame
    from ..feedback.clickmodels import CLICK_MODELS
    from ..feedback.simulate import HttpShop, Shoppers
    from ..ingest import Catalog
    from ..modeldir import ModelDir
    from ..serving.build import open_service
    from ..serving.follow import RegistryFollower
    from ..serving.http.app import BackgroundServer
    from .retrain import judgments_reference

    from ..errors import FusionrankError

    if train_on not in TRAIN_ON:
        raise FusionrankError(f"train_on must be one of {', '.join(TRAIN_ON)}; got {train_on!r}")
    for name, value in (("simulate", simulate), ("interleave_simulate", interleave_simulate)):
        if value not in SIMULATE:
            raise FusionrankError(f"{name} must be one of {', '.join(SIMULATE)}; got {value!r}")
    if propensity == "swaps" and randomise_share <= 0:
        raise FusionrankError("propensity 'swaps' estimates the position bias from randomised searches; set randomise_share "
                              "above 0 (e.g. 0.1), or choose another estimator (harvest needs two logged model versions)")
    registry_dir = Path(registry_dir)
    if (registry_dir / "registry.json").exists():
        reg = ModelRegistry.open(registry_dir)
        if policy is not None:
            reg.set_policy(policy)
    else:
        reg = ModelRegistry.create(registry_dir, policy)
        reg.register(model_dir, training_data=judgments_reference(model_dir), actor="loop", reason="the loop's starting model")
    pol = reg.read().policy
    if pol.mode == "auto":  # the loop takes the decisions itself, in order; the service only follows
        pol = pol.model_copy(update={"mode": "manual"})
        reg.set_policy(pol)
    md = ModelDir.open(model_dir)
    cat = Catalog.load(md.catalog_location()[0])
    train_q = split_frame(cat, md.config().data.train_split)
    shoppers = Shoppers(train_q, cat.qrels, CLICK_MODELS.get(click_model)(), k=k, seed=seed)
    data_dir = registry_dir / "service-data"
    svc = open_service(model_dir, data_dir=data_dir, registry=registry_dir, randomise_share=randomise_share,
                       explore_share=explore_share, explore_depth=explore_depth, explore_count=explore_count,
                       log=lambda m: log("  " + m))
    store_url = getattr(svc.events, "url", str(data_dir / "events.sqlite"))
    key_file = data_dir / "events.key"
    follower = RegistryFollower(svc, reg, poll_seconds=0.1, log=lambda m: log("  " + m), auto=False).start()
    reports: list[RoundReport] = []
    draws = itertools.count(seed * 1_000_000 + 1)  # one seed per batch of sessions: the traffic goes on, never repeats
    try:
        with BackgroundServer(svc, port=port, events_key="loop-events") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
            shop = HttpShop(http, "loop-events")
            log(f"serving {reg.read().promoted().id} on {srv.url}/ (events in {store_url}; {randomise_share:.0%} of the "
                "searches not interleaved are randomised"
                + (f", {explore_share:.0%} of the others explored ({explore_count} of the page from ranks {k + 1}..{explore_depth})"
                   if explore_share else "") + ")")
            for r in range(1, rounds + 1):
                t0 = time.perf_counter()
                idx = reg.read()
                before = idx.promoted()
                log(f"[round {r}/{rounds}] simulate: {sessions:,} sessions on {before.id} ({click_model} clicks"
                    + (", in bulk)" if simulate == "cached" else ")"))
                _wait(lambda: svc.model.version == before.model_version, 30, f"serve {before.id}")
                since = time.time()
                if simulate == "cached":
                    rep = shoppers.run_cached(svc, sessions, log=None, seed=next(draws))
                else:
                    rep = shoppers.run_live(shop, sessions, seed=next(draws))
                log(f"  {rep.searches:,} searches ({rep.randomised:,} randomised), " +
                    ", ".join(f"{n:,} {a}" for a, n in rep.actions.items()) + f" in {rep.seconds:.0f} s")
                log(f"[round {r}/{rounds}] retrain on " + ("every search logged so far" if train_on == "all"
                                                            else "the searches of this round"))
                cand = retrain(reg, store_url, since=since if train_on == "round" else None, labels=labels, propensity=propensity,
                               logging_model=str(reg.model_path(before)) if labels == "dr" and logging_scores else None,
                               dm_regressor=dm_regressor, loss=loss,
                               judgments_weight=judgments_weight, key_file=str(key_file) if key_file.exists() else None,
                               epochs=epochs, seed=seed + r, actor="loop", index=str(md.index_dir),
                               log=lambda m: log("  " + m))
                cand_ndcg = (cand.offline or {}).get("metrics", {}).get(pol.metric)
                base_ndcg = (cand.offline or {}).get("baseline_metrics", {}).get(pol.metric)
                log(f"[round {r}/{rounds}] interleave {cand.id} with {before.id}")
                outcome, used, res = "refused offline", 0, None
                if start_interleaving(reg, cand.id, actor="loop", log=lambda m: log("  " + m)):
                    _wait(lambda: any(h.version == cand.model_version for h in svc.interleaving[0]), 30, "start interleaving")
                    while True:
                        if interleave_simulate == "cached":
                            shoppers.run_cached(svc, interleave_batch, log=None, seed=next(draws))
                        else:
                            shoppers.run_live(shop, interleave_batch, seed=next(draws))
                        used += interleave_batch
                        res = decide(reg, cand.id, svc.events, actor="loop", retire_refused=True)
                        log(f"  {used:,} sessions: {res.reasons[-1]}")  # the online check's sentence
                        if res.verdict != "wait":
                            outcome = "promoted" if res.verdict == "promote" else "refused online"
                            break
                        if used >= max_interleave_sessions:
                            reg.set_state(cand.id, "retired", actor="loop", reason=f"no confident decision after {used:,} "
                                          "sessions of interleaving", evidence={"reasons": res.reasons, **res.evidence})
                            outcome = "undecided"
                            break
                log(f"[round {r}/{rounds}] promote: {cand.id} {outcome}")
                after = reg.read().promoted()
                _wait(lambda: svc.model.version == after.model_version and not svc.interleaving[0], 30, f"serve {after.id}")
                il = (res.evidence.get("interleaving") if res is not None else None) or {}
                reports.append(RoundReport(r, cand.id, outcome, after.id, cand_ndcg if after.id == cand.id else base_ndcg,
                                           cand_ndcg, sessions, ((cand.training_data or {}).get("events") or {}).get("searches"),
                                           used, il.get("preference"), il.get("ci"),
                                           round(time.perf_counter() - t0, 1)))
                log(f"  now serving {after.id}" + (f", {pol.metric} {reports[-1].promoted_ndcg:.4f}"
                                                    if reports[-1].promoted_ndcg is not None else ""))
            if serve_forever:
                log(f"serving {reg.read().promoted().id} on {srv.url}/ (Ctrl-C stops)")
                while True:
                    time.sleep(3600)
    finally:
        follower.stop()
        svc.close()
    return reports
