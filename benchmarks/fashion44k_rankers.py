"""fashion44k dev, full 44k catalogue: baselines, single-modality rankers, every fusion
method and LightGBM lambdarank on the same features, for `title` and `title_sparse`.

One command, one run, everything printed side by side:

    .venv/bin/python benchmarks/fashion44k_rankers.py [--train-queries 1500] [--epochs 8]

Every learned ranker is trained once, on the training queries of BOTH catalogue
variants (as configs/fashion44k.toml does), with early stopping on held-out training
queries; dev is used only for the reported figures. The BM25+MiniLM hybrid is tuned
on the held-out training queries (and, for reference, also on dev itself, as the
reference figure in the data README was). All-minus-one ablations mask one modality
of the full fusion model at inference. Writes benchmarks/results/fashion44k.md with plots.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fusionrank import schema as S  # noqa: E402
from fusionrank.experiment import ExperimentConfig, split_frame, ideal_for, training_data  # noqa: E402
from fusionrank.workspace import Workspace, resolve_source  # noqa: E402
from fusionrank.ingest import split_queries  # noqa: E402
from fusionrank.metrics import compare, evaluate  # noqa: E402
from fusionrank.modalities import MODALITY_NAMES as MODALITIES  # noqa: E402
from fusionrank.ranking import QueryEncoder, RankingPipeline, Slates, feature_groups, topk_rows  # noqa: E402
from fusionrank.rankers import GBDTRanker  # noqa: E402
from fusionrank.report import plot_per_query, plot_systems, plot_weights, write_report  # noqa: E402

METRICS = ["ndcg@10", "map", "mrr", "recall@100"]


def full_run(ids, qids, scores, k=1000):
    rows = topk_rows(scores, k)
    parts = []
    for i, q in enumerate(qids):
        r = rows[i][rows[i] >= 0]
        parts.append(pd.DataFrame({S.QUERY_ID: q, S.PRODUCT_ID: ids[r], S.SCORE: scores[i, r].astype(float)}))
    return pd.concat(parts, ignore_index=True)


def bm25_scores(cat, field, queries):
    """BM25 of every catalogue row for each query ``[Q, P]`` (0 where nothing matches), from the catalogue's field."""
    lf = cat.lexical[field]
    out = np.zeros((len(queries), cat.n_rows), np.float32)
    for i, q in enumerate(queries):
        rows, sc = lf.score(lf.query_terms(q)).arrays()
        out[i, rows] = sc
    return out


def minmax(a):
    lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "fashion44k.toml"))
    ap.add_argument("--train-queries", type=int, default=1500, help="training queries per variant (of 2,700)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=600, help="training time cap per model")
    ap.add_argument("--fusions", default="concat,weighted_sum,max_pool,mean_pool,gated")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = ExperimentConfig.load(args.config)
    cfg.training.epochs, cfg.training.max_train_seconds = args.epochs, args.max_seconds
    src = resolve_source(cfg.data.source, Path(args.config))
    ws = Workspace(src, cfg.data.adapter, cfg.data.limit, adapter_args=cfg.data.adapter_args)
    cat = ws.catalog()
    ws.encode(cat.products, cfg.encode_settings(), progress=False)
    train_q = split_frame(cat, "train")
    sp = split_queries(train_q, {"train": 0.9, "valid": 0.1}, seed=cfg.seed)
    tq = train_q[sp == "train"].sample(n=min(args.train_queries, int((sp == "train").sum())), random_state=cfg.seed)
    vq = train_q[sp == "valid"]
    dev = split_frame(cat, "dev")
    dev_qrels = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(dev[S.QUERY_ID]))]
    variants = ["title", "title_sparse"]
    t0 = time.perf_counter()
    train_sl, valid_sl, tables, catalogs = training_data(cat.products, ws.store_dir, cfg, tq, vq, cat.qrels, title_fields=variants)
    valid_ideal = ideal_for(valid_sl, cat.qrels)
    # one query encoder (the ranking path's, as training uses) for the dev slates and the baselines
    qenc = QueryEncoder(text_encoder=cfg.text_encoder_spec, cache_size=len(dev) + len(vq) + 16)

    def pipeline(tf, ranker=None):
        return RankingPipeline.over(catalogs[tf], ranker, qenc)

    dev_sl = {tf: pipeline(tf).slates(dev[S.QUERY_ID].tolist(), dev[S.QUERY].tolist(), cat.qrels) for tf in variants}
    print(f"slates: train {len(train_sl)}, valid {len(valid_sl)}, dev 2x{len(dev)} in {time.perf_counter() - t0:.0f} s")

    rows, per_query, weights, timings = [], {}, {}, {}

    def record(system, tf, res_mean, pq=None):
        rows.append({"system": system, "variant": tf, **{m: res_mean[m] for m in METRICS}})
        if pq is not None:
            per_query[(system, tf)] = pq

    # --- baselines over the full catalogue --------------------------------------
    for tf in variants:
        idx = catalogs[tf]
        qs, qids = dev[S.QUERY].tolist(), dev[S.QUERY_ID].tolist()
        qe = qenc.encode_many(qs)
        bm = bm25_scores(idx, "title", qs)
        de = qe @ idx.emb["title"][:idx.n_rows].T
        for name, sc in (("BM25 (title)", bm), ("dense MiniLM (title)", de)):
            r = evaluate(dev_qrels, full_run(idx.ids, qids, sc), METRICS)
            record(name, tf, r.mean, r.per_query["ndcg@10"])
        # hybrid weight tuned on held-out training queries, then applied to dev
        vqs = vq[S.QUERY].tolist()
        vqe = qenc.encode_many(vqs)
        vbm = minmax(bm25_scores(idx, "title", vqs))
        vde = minmax(vqe @ idx.emb["title"][:idx.n_rows].T)
        vqr = cat.qrels[cat.qrels[S.QUERY_ID].isin(set(vq[S.QUERY_ID]))]
        grid = np.round(np.arange(0.0, 1.01, 0.1), 2)
        best_w = max(grid, key=lambda w: evaluate(vqr, full_run(idx.ids, vq[S.QUERY_ID].tolist(), w * vbm + (1 - w) * vde, 100), ["ndcg@10"]).mean["ndcg@10"])
        h = best_w * minmax(bm) + (1 - best_w) * minmax(de)
        r = evaluate(dev_qrels, full_run(idx.ids, qids, h), METRICS)
        record(f"hybrid BM25+MiniLM (w={best_w})", tf, r.mean, r.per_query["ndcg@10"])
        per_query[("hybrid", tf)] = r.per_query["ndcg@10"]
        dev_best = max(grid, key=lambda w: evaluate(dev_qrels, full_run(idx.ids, qids, w * minmax(bm) + (1 - w) * minmax(de), 100), ["ndcg@10"]).mean["ndcg@10"])
        r = evaluate(dev_qrels, full_run(idx.ids, qids, dev_best * minmax(bm) + (1 - dev_best) * minmax(de)), METRICS)
        record(f"hybrid tuned on dev (w={dev_best}, reference only)", tf, r.mean)

    # --- learned rankers ------------------------------------------------------------
    def fit_eval(system, ranker, modalities):
        t = time.perf_counter()
        ranker.fit(train_sl, feature_groups(modalities), tables, valid=valid_sl, valid_ideal_dcg=valid_ideal, log=None)
        timings[system] = round(time.perf_counter() - t, 1)
        for tf in variants:
            pipe = pipeline(tf, ranker)
            r = evaluate(dev_qrels, pipe.run(None, None, slates=dev_sl[tf]), METRICS)
            record(system, tf, r.mean, r.per_query["ndcg@10"])
        print(f"  {system}: trained in {timings[system]} s; dev ndcg@10 " +
              ", ".join(f"{tf} {rows[-2 + i]['ndcg@10']:.4f}" for i, tf in enumerate(variants)), flush=True)
        return ranker

    def neural(fusion, modalities):
        c = cfg.model_copy(deep=True)
        c.fusion.name = fusion
        c.modalities = list(modalities)
        if len(modalities) == 1:
            c.training.modality_dropout = 0.0
        return c.build_ranker()

    for m in MODALITIES:
        fit_eval(f"{m}-only ranker", neural("weighted_sum", [m]), [m])
    full = {}
    for fu in args.fusions.split(","):
        full[fu] = fit_eval(f"full fusion: {fu}", neural(fu, MODALITIES), list(MODALITIES))
        w = full[fu].modality_weights()
        if w is None:
            sl = dev_sl["title_sparse"]
            _, wt = full[fu].predict(sl, catalogs["title_sparse"].tables(), return_weights=True)
            pres = sl.rows >= 0
            w = {g.name: float(wt[..., j][pres].mean()) for j, g in enumerate(full[fu].groups_)}
        weights[fu] = w
    fit_eval("LightGBM lambdarank (same features)", GBDTRanker(seed=cfg.seed), list(MODALITIES))

    # all-minus-one ablation of the best fusion model, by masking at inference
    table = pd.DataFrame(rows)
    fus_rows = table[table.system.str.startswith("full fusion")]
    best_fu = fus_rows.groupby("system")["ndcg@10"].mean().idxmax().split(": ")[1]
    best = full[best_fu]
    for k, m in enumerate(MODALITIES):
        for tf in variants:
            sl = dev_sl[tf]
            masked = Slates(sl.query_ids, sl.queries, sl.rows, sl.x, sl.mask.copy(), sl.q, sl.y)
            masked.mask[..., k] = False
            pipe = pipeline(tf, best)
            r = evaluate(dev_qrels, pipe.run(None, None, slates=masked), METRICS)
            record(f"ablation: {best_fu} without {m}", tf, r.mean)
    table = pd.DataFrame(rows)

    # --- report ---------------------------------------------------------------------
    hyb = {tf: table[(table.variant == tf) & table.system.str.startswith("hybrid BM25")]["ndcg@10"].iloc[0] for tf in variants}
    table["ndcg@10 / hybrid"] = [r["ndcg@10"] / hyb[r["variant"]] for _, r in table.iterrows()]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    for tf in variants:
        print(f"\n=== fashion44k dev, full catalogue, {tf} ===")
        print(table[table.variant == tf].drop(columns="variant").to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    sig_rows = []
    for tf in variants:
        a = per_query[("hybrid", tf)]
        b = per_query[(f"full fusion: {best_fu}", tf)]
        for test in ("t", "permutation"):
            s = compare(a, b, test=test)
            sig_rows.append({"variant": tf, "test": s.test, "hybrid": s.mean_a, f"fusion ({best_fu})": s.mean_b,
                             "diff": s.diff, "p": s.p_value, "n": s.n})
    sig = pd.DataFrame(sig_rows)
    print("\nPaired significance, best fusion vs hybrid:\n" + sig.to_string(index=False))

    def g(system, tf, m="ndcg@10"):
        return float(table[(table.system == system) & (table.variant == tf)][m].iloc[0])

    singles = [f"{m}-only ranker" for m in MODALITIES]
    goals = []
    for tf in variants:
        bf = g(f"full fusion: {best_fu}", tf)
        bs = max(g(s, tf) for s in singles)
        goals.append(f"- {tf}: best fusion {bf:.4f} vs best single modality {bs:.4f} and BM25 {g('BM25 (title)', tf):.4f}: "
                     + ("met" if bf > bs and bf > g("BM25 (title)", tf) else "NOT met"))
    lost = g("BM25 (title)", "title") - g("BM25 (title)", "title_sparse")
    fus_loss = g(f"full fusion: {best_fu}", "title") - g(f"full fusion: {best_fu}", "title_sparse")
    goals.append(f"- title -> title_sparse: BM25 loses {lost:.4f}; fusion loses {fus_loss:.4f} "
                 f"(recovers {100 * (1 - fus_loss / lost) if lost > 0 else float('nan'):.0f}% of BM25's loss; and is "
                 f"{g(f'full fusion: {best_fu}', 'title_sparse') - g('BM25 (title)', 'title'):+.4f} vs BM25 on full titles)")
    best_neural = max(g(f"full fusion: {fu}", tf) for fu in full for tf in ["title"]), max(g(f"full fusion: {fu}", "title_sparse") for fu in full)
    lgb = g("LightGBM lambdarank (same features)", "title"), g("LightGBM lambdarank (same features)", "title_sparse")
    goals.append(f"- best neural fusion vs LightGBM: title {best_neural[0]:.4f} vs {lgb[0]:.4f}, title_sparse {best_neural[1]:.4f} vs {lgb[1]:.4f}: "
                 + ("met" if best_neural[0] >= lgb[0] and best_neural[1] >= lgb[1] else "NOT met"))
    print("\nGoals:\n" + "\n".join(goals))
    p1 = plot_systems(table[~table.system.str.contains("reference")], "ndcg@10", out / "fashion44k_ndcg.png")
    p2 = plot_weights(weights, out / "fashion44k_alpha.png")
    p3 = plot_per_query(per_query[(f"full fusion: {best_fu}", "title_sparse")] - per_query[("hybrid", "title_sparse")],
                        f"{best_fu} fusion minus hybrid, per dev query (title_sparse)", out / "fashion44k_per_query.png")
    info = (f"Run on {time.strftime('%Y-%m-%d %H:%M')}, 2-core machine, {time.perf_counter() - t_all:.0f} s in all. "
            f"Training: {len(tq)} queries per variant x 2 variants, {len(vq)} held-out validation queries per variant; "
            f"epochs <= {args.epochs}, {args.max_seconds:.0f} s cap per model; candidates: hybrid top {cfg.candidates.n}.")
    write_report(out / "fashion44k.md", "fashion44k dev: rankers side by side", [
        ("Setup", info), ("Results", table), ("NDCG@10 by system", p1), ("Learned modality weights", pd.DataFrame(weights).T.reset_index().rename(columns={"index": "fusion"})),
        ("Modality weights plot", p2), ("Per-query differences", p3), ("Paired significance (best fusion vs hybrid)", sig),
        ("Goals", "\n".join(goals)), ("Training time (s)", pd.DataFrame([timings]).T.reset_index().rename(columns={"index": "model", 0: "seconds"}))])
    (out / "fashion44k.json").write_text(json.dumps({"table": rows, "weights": weights, "timings": timings, "goals": goals}, indent=1, default=float))
    print(f"\nreport: {out / 'fashion44k.md'} ({time.perf_counter() - t_all:.0f} s)")


if __name__ == "__main__":
    main()
