"""One ranking path, before and after, in one run: evaluation time and result, search start-up, served latency, size.

    .venv/bin/python benchmarks/ranking_path.py [--model M] [--before REV] [--requests 600]

``--before`` is a git revision of this repository (default ``0b1bdb9``, the last commit with two
ranking stacks); its ``src/`` is exported with ``git archive`` into a temporary folder and run with
the same virtualenv, so both sides use the same packages, model directory, catalogue and store.
Measured for each side, in this order, each in a fresh process:

1. ``fusionrank evaluate --json`` on fashion44k dev (500 queries, full catalogue), per title field:
   wall time and the metrics (NDCG@10 must agree to 1e-6);
2. ``fusionrank search MODEL "..." --json``: wall time of a one-query search, start-up included
   (median of ``--search-runs``);
3. ``fusionrank serve`` driven by ``benchmarks/loadgen.py`` from another process, one client,
   ``--requests`` distinct train+dev queries (k=10, explanations on): p50/p99 and requests/s.
   Before, ``serve`` builds its index on first start (into a scratch folder); after, it opens
   ``MODEL/index`` (written by ``fusionrank train`` / ``fusionrank index``). Start-up is timed too;
4. lines of code of the ranking path (candidates, features, ranking, hits) on both sides.

Writes benchmarks/results/ranking_path.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"

# the files of the ranking path on each side (candidates, features, ranking, hits, the tables they read)
BEFORE_FILES = ["src/fusionrank/features.py", "src/fusionrank/pipeline.py", "src/fusionrank/retrieval/dense.py",
                "src/fusionrank/retrieval/hybrid.py", "src/fusionrank/serving/index.py", "src/fusionrank/serving/service.py",
                "src/fusionrank/serving/lexical.py", "src/fusionrank/serving/ann.py", "src/fusionrank/serving/query.py",
                "src/fusionrank/serving/build.py", "src/fusionrank/experiment.py:load_model,open_pipeline,training_data"]
AFTER_FILES = ["src/fusionrank/modalities.py", "src/fusionrank/ranking/catalog.py", "src/fusionrank/ranking/explain.py",
               "src/fusionrank/ranking/features.py", "src/fusionrank/ranking/lexical.py", "src/fusionrank/ranking/pipeline.py",
               "src/fusionrank/ranking/query.py", "src/fusionrank/ranking/retrieve.py", "src/fusionrank/ranking/stage.py",
               "src/fusionrank/ranking/vectors.py", "src/fusionrank/serving/index.py", "src/fusionrank/serving/service.py",
               "src/fusionrank/serving/build.py", "src/fusionrank/modeldir.py", "src/fusionrank/experiment.py:training_data"]


def code_lines(text: str, functions: str | None = None) -> int:
    """Lines that are not blank, not comments and not inside docstrings (of the named top-level functions only, if given)."""
    import ast
    import io
    import tokenize

    doc = set()
    tree = ast.parse(text)
    keep = None
    if functions:
        names = set(functions.split(","))
        keep = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                keep.update(range(node.lineno, node.end_lineno + 1))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                doc.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    lines -= doc
    return len(lines if keep is None else lines & keep)


def export_src(rev: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=tar, check=True)
    return dst / "src"


def cli(src: Path, *args, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fusionrank.cli", *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"fusionrank {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr[-2000:]}")
    return time.perf_counter() - t0, p


def serve_latency(src: Path, model: Path, index: Path, port: int, queries: list[str], tmp: Path) -> dict:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "FUSIONRANK_ADMIN_KEY": "bench"}
    t0 = time.perf_counter()
    srv = subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--index", str(index), "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        while True:
            if srv.poll() is not None:
                raise RuntimeError(f"server exited with {srv.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        start_s = time.perf_counter() - t0
        qf, out = tmp / "queries.txt", tmp / "load.json"
        qf.write_text("\n".join(queries))
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
                        "--queries", str(qf), "--requests", str(len(queries)), "--concurrency", "1", "--out", str(out)], check=True)
        r = json.loads(out.read_text())
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    lat = np.asarray([x for x, s in zip(r["latency_ms"], r["status"]) if s == 200], float)
    return {"start_seconds": start_s, "failed": int(sum(s != 200 for s in r["status"])), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "rps": len(queries) / r["wall_seconds"]}


def main() -> None:
    from fusionrank.settings import get_settings

    data = get_settings().fashion44k_dir
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=get_settings().models_dir / "fashion44k-full")
    ap.add_argument("--before", default="0b1bdb9")
    ap.add_argument("--data", type=Path, default=data)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--search-runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--results", default="ranking_path", help="results file name (without .md/.json) under benchmarks/results")
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    res: dict = {"model": str(args.model), "before": args.before,
                 "after": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip(), "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        sides = {"before": export_src(args.before, tmp / "before"), "after": ROOT / "src"}
        # 4. size first (cheap)
        res["loc"] = {}
        for side, files in (("before", BEFORE_FILES), ("after", AFTER_FILES)):
            base = sides[side].parent
            per = {f: code_lines((base / f.split(":")[0]).read_text(), f.partition(":")[2] or None) for f in files}
            res["loc"][side] = {"files": per, "total": sum(per.values())}
        log(f"ranking-path code lines: before {res['loc']['before']['total']}, after {res['loc']['after']['total']}")
        if not (args.model / "index" / "index.json").exists():  # a model trained before `train` wrote its index
            secs, _ = cli(sides["after"], "index", args.model)
            res["index_build_seconds"] = secs
            log(f"fusionrank index {args.model}: {secs:.1f} s (a one-off preparation step)")
        # 1. evaluate
        q, r = args.data / "queries_dev.tsv", args.data / "qrels_dev.tsv"
        res["evaluate"] = {}
        for tf in ("title", "title_sparse"):
            for side, src in sides.items():
                secs, p = cli(src, "evaluate", "--model", args.model, "--queries", q, "--qrels", r, "--title-field", tf, "--json")
                out = json.loads(p.stdout.strip().splitlines()[-1])
                res["evaluate"].setdefault(tf, {})[side] = {"wall_seconds": secs, **{k: out[k] for k in ("ndcg@10", "map", "mrr", "recall@100")}}
                log(f"evaluate {tf} {side}: {secs:.1f} s, ndcg@10 {out['ndcg@10']:.6f}")
        # 2. one-query search, start-up included
        res["search"] = {}
        for side, src in sides.items():
            ts = [cli(src, "search", args.model, "black watch for men", "--json")[0] for _ in range(args.search_runs)]
            res["search"][side] = {"runs_seconds": ts, "median_seconds": statistics.median(ts)}
            log(f"search {side}: median {statistics.median(ts):.1f} s over {len(ts)} runs")
        # 3. served latency
        if not args.skip_serve:
            import pandas as pd

            texts = pd.concat([pd.read_csv(args.data / "queries_train.tsv", sep="\t"), pd.read_csv(q, sep="\t")])["query"]
            queries = list(dict.fromkeys(texts.astype(str)))[:args.requests]
            res["serve"] = {}
            for side, src in sides.items():
                index = tmp / f"index-{side}"
                if side == "after":
                    shutil.copytree(args.model / "index", index)  # the prepared index; before builds its own on start
                res["serve"][side] = serve_latency(src, args.model, index, args.port, queries, tmp)
                s = res["serve"][side]
                log(f"serve {side}: start {s['start_seconds']:.1f} s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
                    f"{s['rps']:.0f} req/s, {s['failed']} failed")
    res["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(res, indent=2))
    (RESULTS / f"{args.results}.md").write_text(report(res))
    print(report(res))


def report(res: dict) -> str:
    b, a = "before", "after"
    lines = [f"# One ranking path: before ({res['before']}) and after ({res['after']}), one run", "",
             f"Model `{res['model']}`; load average at start {res['loadavg_start'][0]:.2f}, at end {res['loadavg_end'][0]:.2f}.", "",
             "| measure | before | after | after / before |", "|---|---|---|---|"]
    for tf, d in res["evaluate"].items():
        lines.append(f"| `fusionrank evaluate` wall time, dev, {tf} (s) | {d[b]['wall_seconds']:.1f} | {d[a]['wall_seconds']:.1f} | "
                     f"{d[a]['wall_seconds'] / d[b]['wall_seconds']:.3f} |")
    for tf, d in res["evaluate"].items():
        diff = abs(d[a]["ndcg@10"] - d[b]["ndcg@10"])
        lines.append(f"| dev NDCG@10, {tf} | {d[b]['ndcg@10']:.6f} | {d[a]['ndcg@10']:.6f} | difference {diff:.1e} |")
    s = res["search"]
    lines.append(f"| `fusionrank search` one query, start-up included (s, median) | {s[b]['median_seconds']:.1f} | "
                 f"{s[a]['median_seconds']:.1f} | {s[a]['median_seconds'] / s[b]['median_seconds']:.3f} |")
    if "serve" in res:
        v = res["serve"]
        for key, name in (("start_seconds", "`fusionrank serve` start-up until healthy (s)"), ("p50_ms", "search p50, 1 client (ms)"),
                          ("p99_ms", "search p99, 1 client (ms)"), ("rps", "requests/s, 1 client")):
            lines.append(f"| {name} | {v[b][key]:.1f} | {v[a][key]:.1f} | {v[a][key] / v[b][key]:.3f} |")
        lines.append(f"| failed requests | {v[b]['failed']} | {v[a]['failed']} | |")
    if "index_build_seconds" in res:
        lines.append(f"| `fusionrank index` (one-off preparation, after only) (s) | | {res['index_build_seconds']:.1f} | |")
    lo = res["loc"]
    lines.append(f"| ranking-path lines of code | {lo[b]['total']} | {lo[a]['total']} | {lo[a]['total'] / lo[b]['total']:.3f} |")
    lines += ["", "Lines of code per file (not blank, comment or docstring):", ""]
    for side in (b, a):
        lines.append(f"- {side}: " + ", ".join(f"`{f.removeprefix('src/fusionrank/')}` {n}" for f, n in lo[side]["files"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
