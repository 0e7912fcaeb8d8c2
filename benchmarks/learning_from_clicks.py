"""Learning from simulated shoppers on fashion44k: clicks -> labels -> the same fusion ranker, against full information.

    .venv/bin/python benchmarks/learning_from_clicks.py [--sessions 10000,100000,1000000] [--click-models pbm,trust_bias]
        [--arms bm25/*,full/*] [--merge]

One run, in this order (everything under ``--out``, default ``$FUSIONRANK_HOME/bench-clicks``):

1. ``clicks_prepare.py`` (cached): training/dev slates from the ranking path, the serving index
   (full catalogue, title field ``title``, exact vector search), the weak logging policy ``bm25``
   (a ``feature`` ranker on ``bm25_title``: dev NDCG@10 about 0.68).
2. **Full information**: the fusion ranker (gated fusion, MLP head, ``ips_listwise`` loss) trained on
   the true relevance ``(2^g - 1)/15`` of every candidate of the training queries. It is also the
   *strong* logging policy (saved as a model directory and served).
3. **Simulated shoppers** (:class:`fusionrank.feedback.simulate.Shoppers`): Zipf(1) query popularity
   over the 3,000 training queries, clicks, carts and purchases by a click model on the true grades;
   each logging policy serves through :class:`~fusionrank.serving.service.SearchService` into its own
   SQLite event store (result lists cached per query, every session logged as its own search with its
   features). Click models: PBM (``theta_k = 1/k``, eps- 0.1, eps+ 1.0) and trust bias (ULTRA's theta
   table, eps+_k = 1 - (k+1)/100, eps-_k = 0.65/k).
4. **Propensities** estimated from the logs: intervention harvesting across the two logging policies
   (no randomisation) for PBM; for trust bias, the trust-bias EM when available, else the simulator's
   true alpha/beta (said in the table). Recovery against the truth is reported in its own table,
   with randomised swaps (50% of traffic) and without.
5. **Learning from N sessions** (N = the first N sessions of the 10^6): labels ``naive``, ``ips``
   (or ``affine`` under trust bias) and ``dr`` from the event store's click log, put on the training
   slates, the same ranker and trainer (``dr``'s direct method: a ridge regression on the scalar features
   and the logging policy's score of every candidate, relative to the query's best); dev NDCG@10 on both title fields (full catalogue, ideal DCG from
   all judged products), and the click log-likelihood of each model on 20,000 held-out sessions
   (P(click) = alpha_k sigmoid(a s + b) + beta_k, a and b fitted on the training clicks).
6. The same with the strong logger at the largest N: every labeling, against naive.

``--arms`` picks the logger/labeling pairs to train; ``--merge`` keeps the rows of the results file
that the run does not repeat, each row marked with the run that computed it.

Writes ``benchmarks/results/learning_from_clicks.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from clicks_prepare import FIELDS, bench_config, load_slates, prepare  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine_load() -> str:
    import subprocess

    la = os.getloadavg()
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[1:6]
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores; busiest: " + \
        ", ".join(" ".join(p.split()[::-1]) + "%" for p in ps)


# -- the pieces ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, out: Path, epochs: int, batch: int):
        from fusionrank import schema as S
        from fusionrank.experiment import split_frame, prepare_training
        from fusionrank.ranking import CatalogTables, feature_groups

        self.out, self.epochs, self.batch = out, epochs, batch
        self.config = bench_config()
        src, ws, cat, _, _, _ = prepare_training(self.config, None, lambda m: None, progress=False)
        self.src, self.ws, self.cat = src, ws, cat
        self.train_q = split_frame(cat, "train")
        self.qrels = cat.qrels
        self.train, _ = load_slates(out / "slates_train.npz")
        self.dev = {tf: load_slates(out / f"slates_dev_{tf}.npz") for tf in FIELDS}
        self.tables, self.ids = {}, None
        for tf in FIELDS:
            t = CatalogTables.from_store(cat.products, ws.store_dir, self.config.catalog_config(tf, codec="exact"),
                                         self.config.text_encoder_name, self.config.transcriber_name, log=lambda m: None)
            self.tables[tf] = t.tables()
            if tf == "title":
                self.ids = np.asarray(t.ids[:t.n_rows]).astype(str)
        self.groups = feature_groups(self.config.modalities)
        self.S = S

    def ranker(self, seed: int = 0):
        from fusionrank.rankers import NeuralRanker

        return NeuralRanker(fusion="gated", scorer="mlp", hidden=64, dropout=0.1, loss={"name": "ips_listwise", "args": {}},
                            epochs=self.epochs, batch_size=self.batch, patience=self.epochs, seed=seed, modality_dropout=0.1)

    def fit(self, slates, seed: int = 0):
        t0 = time.perf_counter()
        r = self.ranker(seed).fit(slates, self.groups, self.tables["title"], log=None)
        return r, time.perf_counter() - t0

    def ndcg(self, r) -> dict[str, float]:
        from fusionrank.metrics import ndcg_at_k_padded

        out = {}
        for tf, (sl, ideal) in self.dev.items():
            sc = r.predict(sl, self.tables[tf])
            out[tf] = float(np.mean(ndcg_at_k_padded(sc, np.where(sl.rows >= 0, sl.y, 0), 10, mask=sl.rows >= 0, ideal_dcg=ideal)))
        return out

    def full_information(self):
        from fusionrank.feedback.clickmodels import GradeRelevance

        y = np.where(self.train.rows >= 0, GradeRelevance()(np.clip(self.train.y, 0, None)), -1).astype(np.float32)
        return dataclasses.replace(self.train, y=y)

    def save_model(self, r, name: str) -> Path:
        from fusionrank.modeldir import ModelDir, WorkspaceRecord

        d = self.out / "models" / name
        ModelDir(d).write(config=self.config, ranker=r,
                          workspace=WorkspaceRecord(str(self.src), str(self.ws.catalog_dir), str(self.ws.store_dir), None))
        return d

    def service(self, model_dir: Path, store_path: Path, share: float = 0.0, seed: int = 0):
        from fusionrank.feedback.store import open_store
        from fusionrank.ranking import QueryEncoder
        from fusionrank.serving.index import SearchIndex
        from fusionrank.serving.service import SearchService, load_handle

        index = SearchIndex.load(self.out / "index", log=lambda m: None)
        store = open_store(store_path, b"benchmark-hash-key-0123456789", None)
        return SearchService(index, load_handle(model_dir), QueryEncoder(text_encoder=self.config.text_encoder_spec),
                             events=store, randomise_share=share, seed=seed, log=None)

    def simulate(self, model_dir: Path, store_path: Path, click_model, n: int, seed: int, share: float = 0.0):
        """``n`` sessions logged by ``model_dir`` into ``store_path`` (skipped when the store already holds them)."""
        from fusionrank.feedback.simulate import Shoppers

        done = store_path.with_suffix(".done")
        if done.exists():
            return json.loads(done.read_text())
        for p in store_path.parent.glob(store_path.name + "*"):
            p.unlink()
        svc = self.service(model_dir, store_path, share, seed)
        shoppers = Shoppers(self.train_q, self.qrels, click_model, k=10, zipf_s=1.0, seed=seed)
        rep = shoppers.run_cached(svc, n, chunk=100_000, log=lambda m: log(f"  {store_path.name}{m}"))
        svc.close()
        info = {"sessions": rep.sessions, "actions": rep.actions, "seconds": round(rep.seconds, 1),
                "distinct_lists": rep.distinct_lists, "randomised": rep.randomised}
        done.write_text(json.dumps(info))
        return info

    def click_log(self, store_path: Path) -> pd.DataFrame:
        """The store's click log, impressions of products that are not among their query's training candidates left out.

        The service ranks candidates from the serving index; the training slates were built with the
        same settings, but a product at the edge of the candidate list (rank ~200, float ties) can
        differ, and it has no features to learn from (``fusionrank train`` leaves them out the same way).
        """
        from fusionrank.feedback.labels import among_candidates
        from fusionrank.feedback.store import open_store

        with open_store(store_path, b"benchmark-hash-key-0123456789", None) as st:
            cl = st.click_log()
        known = among_candidates(cl, self.train, self.ids)
        if not known.all():
            log(f"  {store_path.name}: {int((~known).sum()):,} of {len(cl):,} impressions are not training candidates; left out")
        return cl[known]


def first_sessions(cl: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """The click-log rows of ``n`` of its sessions (a seeded random subset: sessions are independent draws)."""
    ids = cl["query_id"].unique()
    if n >= len(ids):
        return cl
    keep = np.random.default_rng(seed).choice(ids, size=n, replace=False)
    return cl[cl["query_id"].isin(set(keep))]


def click_loglik(bench: Bench, r, train_log: pd.DataFrame, test_log: pd.DataFrame, bias) -> float:
    """Mean per-impression log-likelihood of held-out clicks under P(click) = alpha_k sigmoid(a s + b) + beta_k."""
    from scipy.optimize import minimize

    from fusionrank.feedback.labels import slate_pairs

    sc = r.predict(bench.train, bench.tables["title"])
    pairs = slate_pairs(bench.train, bench.ids)
    pairs["s"] = sc[pairs["b"], pairs["n"]]
    pairs = pairs[["user_query", "product_id", "s"]].drop_duplicates(["user_query", "product_id"])

    def frame(lg):
        m = lg[["user_query", "product_id", "rank", "click"]].astype({"product_id": str}).merge(pairs, on=["user_query", "product_id"])
        return m["s"].to_numpy(), bias.alpha(m["rank"].to_numpy()), bias.beta(m["rank"].to_numpy()), (m["click"].to_numpy() > 0)

    s_tr, a_tr, b_tr, c_tr = frame(train_log.sample(n=min(len(train_log), 300_000), random_state=0))
    mu, sd = s_tr.mean(), s_tr.std() + 1e-9

    def nll(p, s, a, b, c):
        pr = np.clip(a / (1 + np.exp(-(p[0] * (s - mu) / sd + p[1]))) + b, 1e-6, 1 - 1e-6)
        return -np.mean(np.where(c, np.log(pr), np.log1p(-pr)))

    p = minimize(nll, np.array([1.0, 0.0]), args=(s_tr, a_tr, b_tr, c_tr), method="Nelder-Mead").x
    return float(-nll(p, *frame(test_log)))


def labels_for(bench: Bench, method: str, sub: pd.DataFrame, bias, logging_scores=None, regressor: str = "trees_plus_slope",
               seed: int = 0):
    """Training slates labelled by ``method``; ``dr`` regresses r_hat on the features and ``logging_scores`` (the logger's)."""
    from fusionrank.feedback.labels import attach_click_labels, click_labels, fit_direct_method

    if method == "dr":
        s = logging_scores
        dm = fit_direct_method(bench.train, click_labels(sub, "affine", bias), bench.ids, logging_scores=s, regressor=regressor,
                               seed=seed)
        lab = click_labels(sub, "dr", bias, r_hat=dm.frame(bench.train, bench.ids, s))
        return attach_click_labels(bench.train, lab, bench.ids, fill=dm.predict(bench.train, s))
    lab = click_labels(sub, method, bias)
    return attach_click_labels(bench.train, lab, bench.ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from fusionrank.settings import get_settings

    ap.add_argument("--out", type=Path, default=get_settings().home / "bench-clicks")
    ap.add_argument("--sessions", default="10000,100000,1000000")
    ap.add_argument("--click-models", default="pbm,trust_bias")
    ap.add_argument("--heldout", type=int, default=20_000)
    ap.add_argument("--propensity-sessions", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--results", default="learning_from_clicks")
    ap.add_argument("--arms", default="bm25/*,full/*",
                    help="logger/labels pairs to train, * for every labeling of the click model (e.g. full/*,bm25/dr)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per training (0: torch's default)")
    ap.add_argument("--full-information-seeds", default="",
                    help="comma-separated seeds other than 0: also train the full-information ranker with them (the reference "
                         "for the summary over seeds; seed 0 is the strong logger itself)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: every arm trains once per seed (ranker and direct method)")
    ap.add_argument("--dm-regressor", default="trees_plus_slope", help="dr's direct method (fusionrank.feedback.labels.DM_REGRESSORS)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the results file that this run does not repeat (marked with their run)")
    a = ap.parse_args()

    from fusionrank.feedback.clickmodels import CLICK_MODELS, GridPositionBased, PositionBased, PowerLawExamination
    from fusionrank.feedback.propensity import ESTIMATORS

    Ns = [int(x) for x in a.sessions.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    load_before = machine_load()
    t_all = time.perf_counter()
    prepare(a.out, log=log)
    bench = Bench(a.out, a.epochs, a.batch)
    run_id = time.strftime("%Y-%m-%d %H:%M")
    earlier = json.loads((RESULTS / f"{a.results}.json").read_text()) if a.merge else None
    res: dict = {"sessions": Ns, "epochs": a.epochs, "batch": a.batch, "dm_regressor": a.dm_regressor, "runs": [],
                 "propensities": {}, "simulations": {},
                 "run": run_id, "command": " ".join(sys.argv[1:])}
    log(f"prepared: {len(bench.train)} training queries x {bench.train.rows.shape[1]} candidates")

    # full information = the strong logger ------------------------------------------------------
    full_dir = a.out / "models" / "full"
    if (full_dir / "ranker" / "ranker.json").exists():
        from fusionrank.rankers import load_ranker

        full = load_ranker(full_dir / "ranker")
        secs = json.loads((a.out / "models" / "full.json").read_text())["seconds"]
    else:
        full, secs = bench.fit(bench.full_information())
        bench.save_model(full, "full")
        (a.out / "models" / "full.json").write_text(json.dumps({"seconds": secs}))
    full_ndcg = bench.ndcg(full)
    res["full_information"] = {"ndcg@10": full_ndcg, "train_seconds": round(secs, 1)}
    log(f"full information: {full_ndcg}")
    res["full_information_by_seed"] = {"0": full_ndcg}
    for sd in [int(x) for x in a.full_information_seeds.split(",") if x.strip()]:
        r_sd, _ = bench.fit(bench.full_information(), sd)
        res["full_information_by_seed"][str(sd)] = bench.ndcg(r_sd)
        log(f"full information, seed {sd}: {res['full_information_by_seed'][str(sd)]}")
    from fusionrank.rankers import load_ranker

    bm25 = load_ranker(a.out / "models" / "bm25" / "ranker")
    res["bm25_logger"] = {"ndcg@10": bench.ndcg(bm25)}
    log(f"bm25 logger: {res['bm25_logger']}")

    def model(name):
        if name == "pbm":
            return PositionBased(PowerLawExamination(1.0))
        return CLICK_MODELS.get(name)()

    loggers = {"bm25": a.out / "models" / "bm25", "full": full_dir}
    logs_dir = a.out / "logs"
    logs_dir.mkdir(exist_ok=True)
    for cm_name in a.click_models.split(","):
        cm = model(cm_name)
        truth = cm.bias(10)
        logs = {}
        for lg_name, md in loggers.items():
            p = logs_dir / f"{lg_name}-{cm_name}-{max(Ns)}.sqlite"
            res["simulations"][p.name] = bench.simulate(md, p, cm, max(Ns), seed=1)
            h = logs_dir / f"{lg_name}-{cm_name}-heldout-{a.heldout}.sqlite"
            res["simulations"][h.name] = bench.simulate(md, h, cm, a.heldout, seed=2)
            t0 = time.perf_counter()
            logs[lg_name] = bench.click_log(p)
            logs[lg_name + "-heldout"] = bench.click_log(h)
            log(f"{cm_name}/{lg_name}: click logs read in {time.perf_counter() - t0:.0f} s ({len(logs[lg_name]):,} rows)")
        # propensities: without randomisation (harvest across the two loggers; em on the weak one) and with swaps
        both = pd.concat([first_sessions(logs["bm25"], a.propensity_sessions, 3), first_sessions(logs["full"], a.propensity_sessions, 3)])
        est = {"harvest (2 loggers, no randomisation)": ESTIMATORS.get("harvest")(both),
               "em (2 loggers, no randomisation)": ESTIMATORS.get("em")(both)}
        rp = logs_dir / f"bm25-{cm_name}-randomised-{a.propensity_sessions}.sqlite"
        res["simulations"][rp.name] = bench.simulate(loggers["bm25"], rp, cm, a.propensity_sessions, seed=4, share=0.5)
        est["swaps (50% randomised)"] = ESTIMATORS.get("swaps")(bench.click_log(rp))
        if "trust_em" in ESTIMATORS:
            est["trust_em (2 loggers)"] = ESTIMATORS.get("trust_em")(both)
        rel = truth.relative()
        res["propensities"][cm_name] = {"true": rel.theta.tolist(), **{k: v.relative().theta.tolist() for k, v in est.items()
                                                                      if not k.startswith("trust_em")}}
        ks = np.arange(1, 11)
        if "trust_em (2 loggers)" in est:  # absolute alpha_k, beta_k: what the affine correction uses
            te = est["trust_em (2 loggers)"]
            res["propensities"][cm_name + " (alpha_k, beta_k)"] = {
                "true alpha": truth.alpha(ks).tolist(), "trust_em alpha": te.alpha(ks).tolist(),
                "true beta": truth.beta(ks).tolist(), "trust_em beta": te.beta(ks).tolist()}
            log(f"{cm_name} trust_em: alpha max rel. error {np.max(np.abs(te.alpha(ks) - truth.alpha(ks)) / truth.alpha(ks)):.1%}")
        for k, v in [(k, v) for k, v in est.items() if not k.startswith("trust_em")]:
            err = np.max(np.abs(v.relative().theta - rel.theta) / rel.theta)
            log(f"{cm_name} propensities, {k}: max rel. error {err:.1%}")
        if cm_name == "pbm":
            bias, bias_name = est["harvest (2 loggers, no randomisation)"], "harvest"
            methods = ["naive", "ips", "dr"]
        else:
            if "trust_em (2 loggers)" in est:
                bias, bias_name = est["trust_em (2 loggers)"], "trust_em"
            else:
                bias, bias_name = truth, "true alpha/beta (no estimator)"
            methods = ["naive", "ips", "affine", "dr"]
        ips_bias = est["harvest (2 loggers, no randomisation)"]
        arms = [tuple(x.split("/")) for x in a.arms.split(",")]
        for lg_name in [lg for lg in ("bm25", "full") if any(al == lg for al, _ in arms)]:
            logger_scores = load_ranker(loggers[lg_name] / "ranker").predict(bench.train, bench.tables["title"])
            for n in (Ns if lg_name == "bm25" else [max(Ns)]):
                sub = first_sessions(logs[lg_name], n, 5)
                for m, seed in [(m, sd) for m in methods if (lg_name, "*") in arms or (lg_name, m) in arms for sd in seeds]:
                    b = ips_bias if m == "ips" else (bias if m != "naive" else None)
                    t0 = time.perf_counter()
                    sl = labels_for(bench, m, sub, b, logger_scores, a.dm_regressor, seed)
                    r, secs = bench.fit(sl, seed)
                    nd = bench.ndcg(r)
                    ll = click_loglik(bench, r, sub, logs[lg_name + "-heldout"], bias)
                    row = {"run": run_id, "seed": seed, "click_model": cm_name, "logger": lg_name, "sessions": n,
                           "method": f"dr ({a.dm_regressor})" if m == "dr" else m,
                           "propensity": "-" if m == "naive" else ("harvest" if m == "ips" else bias_name),
                           "ndcg@10": nd, "click_loglik": ll, "train_seconds": round(secs, 1),
                           "queries_with_labels": int(((sl.y != 0) & (sl.rows >= 0)).any(1).sum())}
                    res["runs"].append(row)
                    log(f"{cm_name} {lg_name} N={n:,} {m} seed {seed}: ndcg {nd} ll {ll:.5f} ({time.perf_counter() - t0:.0f} s)")
                    (RESULTS / f"{a.results}.json").write_text(json.dumps(res if earlier is None else merged(earlier, res), indent=1))
    res["seconds_total"] = round(time.perf_counter() - t_all)
    res["load_before"], res["load_after"] = load_before, machine_load()
    if earlier is not None:
        res = merged(earlier, res)
    (RESULTS / f"{a.results}.json").write_text(json.dumps(res, indent=1))
    write_md(res, RESULTS / f"{a.results}.md")


def merged(earlier: dict, res: dict) -> dict:
    """``res`` with the rows of ``earlier`` it does not repeat (same click model, logger, sessions and labels) kept.

    Earlier rows without a ``run`` get the earlier file's ``run`` (or "first run"); the earlier
    runs' totals and machine load are kept under ``earlier_runs``.
    """
    key = lambda r: (r["click_model"], r["logger"], r["sessions"], r["method"], r.get("seed", 0))  # noqa: E731
    new = {key(r) for r in res["runs"]}
    first = earlier.get("run", "first run")
    kept = [{"run": first, **r} for r in earlier["runs"] if key(r) not in new]
    out = dict(res)
    out["runs"] = sorted(kept + res["runs"], key=lambda r: (r["click_model"], r["logger"] != "bm25", r["sessions"],
                                                           ["naive", "ips", "affine", "dr"].index(r["method"])
                                                           if r["method"] in ("naive", "ips", "affine", "dr") else 9,
                                                           r.get("seed", 0)))
    out["earlier_runs"] = earlier.get("earlier_runs", []) + [
        {k: earlier.get(k) for k in ("run", "command", "seconds_total", "load_before", "load_after", "full_information")}
        | {"run": first}]
    for k in ("propensities", "simulations", "full_information_by_seed"):
        out[k] = {**earlier.get(k, {}), **res.get(k, {})}
    return out


def write_md(res: dict, path: Path) -> None:
    full = res["full_information"]["ndcg@10"]
    L = ["# Learning from simulated shoppers (fashion44k)", "",
         "`.venv/bin/python benchmarks/learning_from_clicks.py`; dev NDCG@10 over the full catalogue (500 queries, "
         "gain 2^g-1, ideal DCG from all judged products). Every model is the same fusion ranker (gated fusion, MLP head, "
         f"`ips_listwise` loss, {res['epochs']} epochs, batch {res['batch']}) trained on the same 3,000 training queries' "
         "candidates; only the labels differ.", "",
         f"- full information (true relevance of every candidate): title {full['title']:.4f}, title_sparse {full['title_sparse']:.4f}",
         f"- weak logging policy (BM25 on titles): title {res['bm25_logger']['ndcg@10']['title']:.4f}, "
         f"title_sparse {res['bm25_logger']['ndcg@10']['title_sparse']:.4f}",
         f"- `dr`: the direct method is a regression ({res.get('dm_regressor', 'ridge')}) of the affine labels on the scalar "
         "features and the logging policy's score relative to the query's best "
         f"(`fit_direct_method(..., logging_scores=, regressor=\"{res.get('dm_regressor', 'ridge')}\")`).", ""]
    runs = sorted({r.get("run", "") for r in res["runs"]})
    if len(runs) > 1:
        L += ["Rows come from more than one run (column `run`); only the rows of a run were computed by it, and its "
              "`% of full` is against the full-information model of that run:", ""]
        for e in res.get("earlier_runs", []) + [{k: res.get(k) for k in ("run", "command", "seconds_total", "full_information")}]:
            fi = (e.get("full_information") or {}).get("ndcg@10")
            secs = "stopped before its end" if e.get("seconds_total") is None else f"{e['seconds_total']} s"
            L.append(f"- {e['run']}: `learning_from_clicks.py {e.get('command') or ''}` ({secs})"
                     + (f"; full information {fi['title']:.4f} / {fi['title_sparse']:.4f}" if fi else ""))
        L.append("")
    run_col = len(runs) > 1
    L += [("| run " if run_col else "") + "| click model | logger | sessions | labels | seed | propensities | NDCG@10 title | % of full | "
          "NDCG@10 title_sparse | % of full | held-out click log-lik. | train s |",
          ("|---" if run_col else "") + "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    # each row against the full-information model of its own run (the reference is retrained in every run)
    ref = {e["run"]: e["full_information"]["ndcg@10"] for e in res.get("earlier_runs", []) if e.get("full_information")}
    for r in res["runs"]:
        n = r["ndcg@10"]
        f = ref.get(r.get("run"), full)
        L.append((f"| {r.get('run', '')} " if run_col else "") +
                 f"| {r['click_model']} | {r['logger']} | {r['sessions']:,} | {r['method']} | {r.get('seed', 0)} | {r['propensity']} | {n['title']:.4f} | "
                 f"{n['title'] / f['title']:.1%} | {n['title_sparse']:.4f} | {n['title_sparse'] / f['title_sparse']:.1%} | "
                 f"{r['click_loglik']:.5f} | {r['train_seconds']} |")
    groups: dict = {}
    for r in res["runs"]:
        f = ref.get(r.get("run"), full)
        groups.setdefault((r["click_model"], r["logger"], r["sessions"], r["method"]), []).append(
            (r.get("seed", 0), [r["ndcg@10"][t] / f[t] for t in ("title", "title_sparse")],
             [r["ndcg@10"][t] for t in ("title", "title_sparse")]))
    multi = {k: v for k, v in groups.items() if len({sd for sd, _, _ in v}) > 1}
    if multi:
        by_seed = res.get("full_information_by_seed", {})
        L += ["", "Over seeds: mean NDCG@10 with the lowest and highest seed; `% of full (same seeds)` divides the mean by the "
              "mean of the full-information rankers trained with the same seeds (seed 0 is the strong logger; "
              "`--full-information-seeds` trains the others), blank where one is missing.", "",
              "| click model | logger | sessions | labels | seeds | NDCG@10 title | % of full (same seeds) | "
              "NDCG@10 title_sparse | % of full (same seeds) |", "|---|---|---:|---|---|---|---:|---|---:|"]
        for (cm, lg, n, m), v in multi.items():
            sds, nd = sorted({sd for sd, _, _ in v}), np.array([x for _, _, x in v])
            cells = []
            for j, t in enumerate(("title", "title_sparse")):
                ref_t = [by_seed[str(sd)][t] for sd in sds if str(sd) in by_seed]
                pct = f"{nd[:, j].mean() / np.mean(ref_t):.1%}" if len(ref_t) == len(sds) else ""
                cells += [f"{nd[:, j].mean():.4f} ({nd[:, j].min():.4f}-{nd[:, j].max():.4f})", pct]
            L.append(f"| {cm} | {lg} | {n:,} | {m} | {','.join(map(str, sds))} | " + " | ".join(cells) + " |")
        if by_seed:
            L += ["", "Full information by seed: " + "; ".join(f"seed {k}: {v['title']:.4f} / {v['title_sparse']:.4f}"
                                                             for k, v in sorted(by_seed.items())) + "."]
    L += ["", "## Propensities recovered (theta_k / theta_1, ranks 1-10, 10^5 sessions per logger; for trust bias also the "
          "absolute alpha_k and beta_k the affine correction uses)", "",
          "Under trust bias the position-only estimators recover click-rate ratios, not theta; the trust-bias EM estimates "
          "alpha_k = theta_k (eps+_k - eps-_k) and beta_k = theta_k eps-_k.", ""]
    for cm, d in res["propensities"].items():
        names = list(d)
        L += [f"### {cm}", "", "| rank | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for k in range(10):
            L.append(f"| {k + 1} | " + " | ".join(f"{d[nm][k]:.3f}" for nm in names) + " |")
        t = np.array(d["true"] if "true" in d else d["true alpha"])
        if "true" in d:
            L.append("| max rel. error | " + " | ".join(f"{np.max(np.abs(np.array(d[nm]) - t) / t):.1%}" for nm in names) + " |")
        else:
            e = np.abs(np.array(d["trust_em alpha"]) - t) / t
            L.append(f"| max rel. error of alpha | | {np.max(e):.1%} | | |")
        L.append("")
    L += ["## Simulations", "", "| store | sessions | actions | distinct result lists | randomised | seconds |", "|---|---:|---|---:|---:|---:|"]
    for k, v in res["simulations"].items():
        L.append(f"| {k} | {v['sessions']:,} | {v['actions']} | {v['distinct_lists']} | {v['randomised']:,} | {v['seconds']} |")
    L += ["", f"Last run: total {res.get('seconds_total', '?')} s. Machine before: {res.get('load_before')}. After: {res.get('load_after')}."]
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
