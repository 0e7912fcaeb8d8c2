"""Gated promotion: a candidate replaces the promoted model only on offline AND online evidence.

:func:`gate` is the rule (pure: evidence in, verdict out). A candidate is promoted only if

1. **offline**: on the evaluation queries its metric (``policy.metric``, NDCG@10 by default) is at
   most ``policy.tolerance`` below the promoted version's, both measured by :func:`offline_comparison`
   on the same queries and the same catalogue tables; and
2. **online**: the team-draft interleaving preference for it over the promoted version
   (:mod:`fusionrank.feedback.interleave`) has its ``policy.confidence`` interval above zero, over at
   least ``policy.min_searches`` searches with credited actions. ``policy.interval`` says which interval:
   ``bootstrap`` (valid for one look), or ``sequential``, a confidence sequence that stays valid however
   often the gate looks while the searches come in (the loop after every batch, the service every
   ``check_seconds``): with the bootstrap interval, every look is another chance for a candidate no
   better than the promoted one to pass.

Negative evidence refuses: an offline drop beyond the tolerance, an interval below zero, or no
decision after ``policy.max_searches``. Missing evidence waits. :func:`decide` applies the verdict
to the registry and records it with its evidence; with ``policy.mode = "auto"`` the service
(:class:`fusionrank.serving.follow.RegistryFollower`) calls it by itself, with ``"manual"`` only
``fusionrank models promote`` does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..feedback.interleave import INTERVAL_NAMES, Interval

__all__ = ["PromotionPolicy", "GateResult", "gate", "decide", "start_interleaving", "offline_comparison", "VERDICTS"]

Verdict = Literal["promote", "refuse", "wait"]
VERDICTS: tuple[str, ...] = get_args(Verdict)


class PromotionPolicy(BaseModel):
    """When a candidate may replace the promoted model (kept in the registry index; ``fusionrank models init --policy``)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "manual"] = "manual"          # auto: the service promotes (or retires) once the gate decides
    metric: str = "ndcg@10"                             # offline metric compared on the evaluation queries
    tolerance: float = Field(0.005, ge=0)               # largest allowed drop of ``metric`` (absolute)
    interleave_share: float = Field(0.2, ge=0, le=1)    # share of searches interleaved while a version is interleaving
    confidence: float = Field(0.95, gt=0, lt=1)         # of the interval of the preference
    interval: Interval = "bootstrap"                    # sequential: valid at every look (confidence sequence)
    sequential_searches: int = Field(10_000, ge=1)      # sequential: credited searches where its interval is tightest
    min_searches: int = Field(200, ge=1)                # credited interleaved searches before deciding
    max_searches: int | None = Field(20_000, ge=1)      # no confident decision by then: refused
    bootstrap: int = Field(2000, ge=100)                # bootstrap resamples
    check_seconds: float = Field(10.0, gt=0)            # auto: how often the service runs the gate

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        from ..metrics.evaluate import parse_metric

        parse_metric(v)  # UnknownNameError lists the valid metrics
        return v


@dataclass
class GateResult:
    """The gate's verdict on one candidate, the reasons (one sentence per check) and the evidence used."""

    verdict: Verdict
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)


def gate(candidate, promoted, report, policy: PromotionPolicy) -> GateResult:
    """The verdict on ``candidate`` against ``promoted`` (:class:`~fusionrank.models.registry.ModelVersion`).

    ``report``: the :class:`~fusionrank.feedback.interleave.ComparisonReport` of the pair, or None.
    """
    reasons: list[str] = []
    verdicts: list[str] = []
    evidence: dict[str, Any] = {"policy": policy.model_dump(), "promoted": promoted.id}
    # offline -----------------------------------------------------------------
    off = candidate.offline
    m = policy.metric
    if not off or off.get("baseline_model_version") != promoted.model_version or m not in off.get("metrics", {}):
        verdicts.append("wait")
        reasons.append(f"offline: no {m} comparison with the promoted version {promoted.id} on the evaluation queries; "
                       f"measure one with `fusionrank models evaluate REGISTRY {candidate.id}`")
    else:
        new, old = off["metrics"][m], off["baseline_metrics"][m]
        delta = new - old
        evidence["offline"] = {"metric": m, "candidate": new, "promoted": old, "delta": delta, "queries": off.get("queries"),
                               "split": off.get("split"), "tolerance": policy.tolerance}
        ok = delta >= -policy.tolerance
        verdicts.append("promote" if ok else "refuse")
        reasons.append(f"offline: {m} {new:.4f} vs {old:.4f} for {promoted.id} ({delta:+.4f}) on {off.get('queries')} "
                       f"{off.get('split')} queries; " + ("within" if ok else "beyond") + f" the tolerance {policy.tolerance}")
    # online ------------------------------------------------------------------
    if report is None or report.used == 0:
        verdicts.append("wait")
        reasons.append(f"interleaving: no credited interleaved searches against {promoted.id} yet")
    else:
        evidence["interleaving"] = report.as_dict()
        lo, hi = report.ci
        what = (f"interleaving: preference {report.preference:+.3f}, {int(policy.confidence * 100)}% "
                + INTERVAL_NAMES[report.interval] + f" [{lo:+.3f}, {hi:+.3f}] "
                f"over {report.used} searches ({report.wins} wins, {report.losses} losses, {report.ties} ties)")
        if report.used < policy.min_searches:
            verdicts.append("wait")
            reasons.append(f"{what}; fewer than the {policy.min_searches} searches the policy asks for")
        elif lo > 0:
            verdicts.append("promote")
            reasons.append(f"{what}; above zero")
        elif hi < 0:
            verdicts.append("refuse")
            reasons.append(f"{what}; below zero: shoppers prefer {promoted.id}")
        elif policy.max_searches is not None and report.used >= policy.max_searches:
            verdicts.append("refuse")
            reasons.append(f"{what}; still includes zero after the policy's maximum of {policy.max_searches} searches")
        else:
            verdicts.append("wait")
            reasons.append(f"{what}; includes zero")
    verdict = "refuse" if "refuse" in verdicts else "wait" if "wait" in verdicts else "promote"
    return GateResult(verdict, reasons, evidence)  # type: ignore[arg-type]


def decide(registry, vid: str, store=None, *, actor: str = "cli", force: bool = False, retire_refused: bool = False,
           record_wait: bool = False, reason: str = "") -> GateResult:
    """Run the gate on version ``vid`` and act on it in ``registry``, recording the decision with its evidence.

    ``promote``: the version is promoted (the promoted one retired). ``refuse``: recorded, and with
    ``retire_refused`` (the auto policy) the version is retired. ``wait``: nothing is recorded unless
    ``record_wait`` (an explicit request that found too little evidence is recorded as refused).
    ``force`` promotes whatever the gate says, recording the gate's evidence and that it was overridden.
    ``store``: the event store holding the interleaved searches (None: no online evidence).
    """
    from ..feedback.interleave import interleaving_report
    from .registry import Decision, RegistryError

    idx = registry.read()
    cand = idx.find(vid)
    promoted = idx.promoted()
    if promoted is None:
        raise RegistryError("the registry has no promoted version to compare with; register one with `fusionrank models add`")
    if cand.id == promoted.id:
        raise RegistryError(f"version {vid} is the promoted version already")
    report = None
    if store is not None:
        p = idx.policy
        reps = interleaving_report(store, confidence=p.confidence, n_resamples=p.bootstrap, interval=p.interval,
                                   optimal_n=p.sequential_searches,
                                   pairs=[(promoted.model_version, cand.model_version)])
        report = reps[0] if reps else None
    res = gate(cand, promoted, report, idx.policy)
    ev = {"verdict": res.verdict, "reasons": res.reasons, **res.evidence}
    if force and res.verdict != "promote":
        registry.set_state(vid, "promoted", actor=actor, reason=reason or "forced: the gate said " + res.verdict, evidence=ev)
    elif res.verdict == "promote":
        registry.set_state(vid, "promoted", actor=actor, reason=reason or "passed the gate", evidence=ev)
    elif res.verdict == "refuse" and retire_refused:
        registry.set_state(vid, "retired", actor=actor, reason=reason or "refused by the gate", evidence=ev)
    elif res.verdict == "refuse" or record_wait:
        registry.record(Decision(time=time.time(), version=vid, action="refuse", from_state=cand.state, to_state=cand.state,
                                 actor=actor, reason=reason or ("refused by the gate" if res.verdict == "refuse"
                                                                else "not enough evidence yet"), evidence=ev))
    return res


def start_interleaving(registry, vid: str, *, actor: str = "cli", log=print) -> bool:
    """Move ``vid`` to ``interleaving`` unless its offline metrics already fail the gate (it is then refused and
    retired without being shown to shoppers). Returns whether it is interleaving."""
    idx = registry.read()
    cand, promoted = idx.find(vid), idx.promoted()
    res = gate(cand, promoted, None, idx.policy) if promoted is not None else None
    if res is not None and res.verdict == "refuse":
        decide(registry, vid, None, actor=actor, retire_refused=True, reason="regresses offline; not shown to shoppers")
        log(f"  {vid} refused and retired: {res.reasons[0]}")
        return False
    registry.set_state(vid, "interleaving", actor=actor, reason="offline within the tolerance" if res else "",
                       evidence=res.evidence if res else {})
    log(f"  {vid} interleaving" + (f": {res.reasons[0]}" if res else ""))
    return True


def offline_comparison(candidate_dir: str | Path, baseline_dir: str | Path, *, baseline_id: str | None = None,
                       metrics: tuple[str, ...] = ("ndcg@10", "map", "mrr", "recall@100"), log=print) -> dict[str, Any]:
    """Both models ranked on the candidate config's evaluation queries over the same catalogue tables (exact search).

    Returns ``{"split", "queries", "title_field", "metrics", "baseline", "baseline_model_version",
    "baseline_metrics", "paired"}``; ``paired`` holds the paired t-test of each metric's per-query
    values (candidate minus baseline).
    """
    from ..errors import FusionrankError
    from ..experiment import evaluate_pipeline, split_frame
    from ..ingest import Catalog
    from ..metrics.significance import paired_t_test
    from ..modeldir import ModelDir

    t0 = time.perf_counter()
    cmd, bmd = ModelDir.open(candidate_dir), ModelDir.open(baseline_dir)
    cfg = cmd.config()
    split = cfg.data.eval_split
    if not split:
        raise FusionrankError(f"{cmd.path}: its config has no data.eval_split to compare on")
    cat = Catalog.load(cmd.catalog_location()[0])
    eq = split_frame(cat, split)
    tables = cmd.catalog_tables(log=lambda m: None)
    cand = evaluate_pipeline(cmd.pipeline(tables), eq, cat.qrels, metrics)
    base = evaluate_pipeline(bmd.pipeline(tables), eq, cat.qrels, metrics)
    paired = {}
    for m in metrics:
        r = paired_t_test(base["per_query"][m], cand["per_query"][m])
        paired[m] = {"delta": float(cand["mean"][m] - base["mean"][m]), "p_value": float(r.p_value),
                     "ci": [float(x) for x in r.ci]}
    log(f"  offline ({split}, {cand['queries']} queries): " + ", ".join(
        f"{m} {cand['mean'][m]:.4f} vs {base['mean'][m]:.4f}" for m in metrics) + f" ({time.perf_counter() - t0:.1f} s)")
    return {"split": split, "queries": cand["queries"], "title_field": tables.config.title_field, "metrics": cand["mean"],
            "baseline": baseline_id, "baseline_model_version": bmd.version(), "baseline_metrics": base["mean"],
            "paired": paired}
