"""Memory per product and dev NDCG@10 of float16 embedding tables against float32, in one run.

    python benchmarks/table_memory.py [--model M] [--copies 23] [--skip-1m]

Two parts, one process, float32 and float16 side by side:

1. **Ranking quality on the real data.** fashion44k dev (500 queries, ``queries_dev.tsv`` /
   ``qrels_dev.tsv`` of the shared folder), the whole 44k catalogue, one trained model
   (default: the click benchmark's text+photo fusion model, ``~/.cache/fusionrank/bench-clicks/models/full``,
   trained on float32 tables). Its catalogue tables are built twice from its embedding store,
   ``table_dtype`` float32 and float16, and ranked through (a) the serving index's path (the
   config's IVF-SQ8 candidates, as ``fusionrank evaluate --index``) and (b) exact candidates
   (as ``fusionrank evaluate``). The IVF codes are built from the float32 vectors in both, so
   the candidates are the same and only the ranker's features and embedding rows differ.
2. **Memory at about 1M products (synthetic).** The 44k catalogue replicated ``--copies`` times:
   records and texts repeated, each copy's vectors perturbed (Gaussian, sigma 0.02 per
   dimension), re-normalised and rounded to float16 (so that the build fits in memory beside
   other jobs; the IVF codes are learned from these vectors). This machine's store has no transcripts, so every product that
   has a voice clip in the catalogue (30% of fashion44k) gets a synthetic transcript vector (its
   title vector, perturbed with sigma 0.05): the transcript table holds as many rows as a fully
   encoded catalogue would. Built once as the service builds it (``SearchIndex.build``, IVF-SQ8
   over the dense sources, ``table_dtype = "float16"``) and counted; the float32 figure is the
   same index with the stored vectors at 4 bytes a value (array sizes, not allocated: the machine
   is shared); then saved and loaded back as the service loads it (float16 tables
   memory-mapped; 5% room for new rows in the slot maps).
   ``memory_bytes()`` counts arrays and indexes, not the Python string objects of the records.

Prints each figure beside the float32 one from the same run and writes
benchmarks/results/table_memory.md (+ .json).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from fusionrank.settings import get_settings  # noqa: E402

HOME = get_settings().home
DTYPES = ("float32", "float16")


def log(msg: str) -> None:
    print(msg, flush=True)


def per_product(mem: dict, n: int) -> float:
    return sum(mem.values()) / n


def quality(model: Path, data: Path) -> tuple[dict, object]:
    """dev NDCG@10 (and more) of the model over float32 and float16 tables, served (IVF) and exact candidates."""
    import torch

    from fusionrank.experiment import evaluate_pipeline
    from fusionrank.ingest import read_catalog_qrels, read_catalog_queries
    from fusionrank.modeldir import ModelDir

    torch.set_num_threads(1)
    md = ModelDir.open(model)
    q = read_catalog_queries(data / "queries_dev.tsv")
    qr = read_catalog_qrels(data / "qrels_dev.tsv")
    out, runs, base32 = {}, {}, None
    for path, codec in (("served (IVF-SQ8 candidates)", None), ("exact candidates", "exact")):
        for dt in DTYPES:
            t0 = time.perf_counter()
            tables = md.catalog_tables(codec=codec, log=lambda m: None, updatable=codec is None, table_dtype=dt)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = evaluate_pipeline(md.pipeline(tables), q, qr, ["ndcg@10", "map", "mrr", "recall@100"])
            key = f"{path}, {dt}"
            runs[key] = res["run"]
            out[key] = {**res["mean"], "queries": res["queries"], "build_seconds": build_s,
                        "eval_seconds": time.perf_counter() - t0, "products": len(tables),
                        "memory_bytes": tables.memory_bytes(), "bytes_per_product": per_product(tables.memory_bytes(), len(tables))}
            log(f"  {key}: ndcg@10 {res['mean']['ndcg@10']:.4f} ({out[key]['eval_seconds']:.0f} s), "
                f"{out[key]['bytes_per_product']:,.0f} bytes/product")
            if codec is None and dt == "float32":
                base32 = tables
            else:
                del tables
            gc.collect()
        a, b = runs[f"{path}, float32"], runs[f"{path}, float16"]
        out[f"{path}: top-10 lists that differ"] = _differing_top10(a, b)
    out["transcript_rows"] = int(base32.emb_mask["transcript"][:base32.n_rows].sum())
    return out, base32


def _differing_top10(a, b) -> dict:
    """How many queries' top 10 (ids in order) differ between two runs (query_id, product_id, score frames)."""
    def top(run):
        r = run.sort_values(["query_id", "score", "product_id"], ascending=[True, False, False])
        return r.groupby("query_id")["product_id"].apply(lambda s: tuple(s.head(10)))
    ta, tb = top(a), top(b)
    common = ta.index.intersection(tb.index)
    diff = int(sum(ta[q] != tb[q] for q in common))
    return {"queries": int(len(common)), "differ": diff}


def replicate(base, copies: int, sigma: float, transcript_sigma: float):
    """Columns, texts, dense float32 tables and masks of ``copies`` perturbed copies of ``base``'s live products."""
    from fusionrank import schema as S
    from fusionrank.modalities import ATTRIBUTE_TABLES, LEXICAL_FIELDS, TABLES
    from fusionrank.serving.index import RECORD_COLUMNS
    from search_latency import replicate_attributes

    n = base.n_rows
    live = np.flatnonzero(base.live[:n])
    rng = np.random.default_rng(0)
    records = {c: np.tile(base.records[c][:n][live], copies) for c in RECORD_COLUMNS}
    ids = base.records[S.PRODUCT_ID][:n][live]
    records[S.PRODUCT_ID] = np.asarray([f"{p}" if j == 0 else f"{p}~{j}" for j in range(copies) for p in ids], dtype=object)
    texts = {f: np.tile(base.lex_text[f][:n][live], copies) for f in LEXICAL_FIELDS}
    has_clip = np.asarray([bool(a) for a in base.records[S.AUDIO][:n][live]])
    emb, mask, notes = {}, {}, {}
    P = len(live) * copies
    for t in TABLES:
        m0 = base.emb_mask[t][:n][live]
        e0 = base.emb[t][live]
        synthetic = t == "transcript" and not m0.any() and has_clip.any()
        if synthetic:  # no transcripts encoded here: every product with a clip gets one (its title vector, perturbed)
            m0 = has_clip
            e0 = base.emb["title"][live] + rng.normal(0, transcript_sigma, (len(live), base.dims[t])).astype(np.float32)
            e0 /= np.linalg.norm(e0, axis=1, keepdims=True)
            e0[~m0] = 0
        e = np.zeros((P, e0.shape[1]), np.float16)  # float16 input: the 1M build must fit beside others' jobs
        for j in range(copies):
            sl = slice(j * len(live), (j + 1) * len(live))
            rows = np.flatnonzero(m0)
            blk = e0[rows] + (0 if j == 0 else rng.normal(0, sigma, (len(rows), e0.shape[1])).astype(np.float32))
            blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-9)
            e[sl][rows] = blk
        emb[t], mask[t] = e, np.tile(m0, copies)
        notes[t] = {"rows_with_vector": int(mask[t].sum()), "share": float(mask[t].mean()),
                    "synthetic_from_title": bool(synthetic)}
        log(f"  {t}: {int(mask[t].sum()):,} of {P:,} products have a vector" + (" (synthetic)" if synthetic else ""))
    keep = np.zeros(n, bool)
    keep[live] = True
    replicate_attributes(base, keep, copies, emb, mask)
    for t in ATTRIBUTE_TABLES:
        notes[t] = {"rows_with_vector": int(mask[t].sum()), "share": float(mask[t].mean()), "synthetic_from_title": False}
        log(f"  {t}: {int(mask[t].sum()):,} of {P:,} products have a row")
    return records, texts, emb, mask, notes


def million(base, copies: int, sigma: float, work: Path) -> dict:
    from fusionrank.modalities import TABLES
    from fusionrank.serving.index import SearchIndex

    t0 = time.perf_counter()
    records, texts, emb, mask, notes = replicate(base, copies, sigma, 0.05)
    log(f"  replicated in {time.perf_counter() - t0:.0f} s")
    cfg = base.config.model_copy(update={"table_dtype": "float16"})
    t0 = time.perf_counter()
    idx = SearchIndex.build(records, texts, emb, mask, cfg, log=lambda m: log("  " + m))
    build_s = time.perf_counter() - t0
    del emb
    gc.collect()
    P = len(idx)
    out = {"products": P, "copies": copies, "sigma": sigma, "tables": notes, "build_seconds": build_s}
    mem16 = idx.memory_bytes()
    out["float16"] = {"memory_bytes": mem16, "bytes_per_product": per_product(mem16, P)}
    # float32 tables hold the same rows at 4 bytes a value: the vectors' bytes twice over, the attribute tables' (one
    # byte a value) four times over (slot maps and masks unchanged)
    extra = sum(len(idx.emb[t].base) * idx.dims[t] * (4 - idx.emb[t].dtype.itemsize) for t in idx.emb)
    mem32 = dict(mem16, embeddings=mem16["embeddings"] + extra)
    out["float32"] = {"memory_bytes": mem32, "bytes_per_product": per_product(mem32, P)}
    d = work / "index-1m-float16"
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    idx.save(d)
    out["save_seconds"] = time.perf_counter() - t0
    del idx
    gc.collect()
    t0 = time.perf_counter()
    loaded = SearchIndex.load(d, log=lambda m: log("  " + m))
    out["load_seconds"] = time.perf_counter() - t0
    mem = loaded.memory_bytes()
    out["float16 loaded (5% room for new rows)"] = {"memory_bytes": mem, "bytes_per_product": per_product(mem, P)}
    out["disk_bytes"] = int(sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))
    # main's layout for comparison: every row of every table in float32, 5% room (computed from the same dims and rows)
    cap = loaded.cap
    dense = sum(4 * loaded.dims[t] * cap + cap for t in TABLES)
    old = dict(mem, embeddings=dense)
    out["before this change (every row, float32; computed)"] = {"memory_bytes": old, "bytes_per_product": per_product(old, P)}
    del loaded
    shutil.rmtree(d, ignore_errors=True)
    return out


def machine() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return str(e)
    return {"uptime": run(["uptime"]), "top": run(["sh", "-c", "top -b -n 1 | head -15"]), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def write(res: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "table_memory.json").write_text(json.dumps(res, indent=2, default=str))
    q = res["quality"]
    L = ["# float16 embedding tables: memory per product and dev NDCG@10, against float32 (one run)", "",
         f"Command: `{res['command']}` ({res['started']} UTC, {res['seconds']:.0f} s). Model: `{res['model']}` "
         f"({res.get('model_about', 'text+photo fusion, gated MLP')}, trained on float32 tables). fashion44k dev: 500 queries, "
         "whole catalogue. torch, OpenMP and MKL 1 thread, `nice -n 10`. The float16 tables keep the colour evidence "
         "(probabilities, 61 classes) as one byte per value (steps of 1/255).", "",
         "## dev NDCG@10 on fashion44k (real data)", "",
         "| path | float32 tables | float16 tables | change | ratio | MAP f32 / f16 | recall@100 f32 / f16 | top-10 lists that differ |",
         "|---|---|---|---|---|---|---|---|"]
    for path in ("served (IVF-SQ8 candidates)", "exact candidates"):
        a, b = q[f"{path}, float32"], q[f"{path}, float16"]
        d = q[f"{path}: top-10 lists that differ"]
        L.append(f"| {path} | {a['ndcg@10']:.4f} | {b['ndcg@10']:.4f} | {b['ndcg@10'] - a['ndcg@10']:+.4f} | "
                 f"{b['ndcg@10'] / a['ndcg@10']:.4f} | {a['map']:.4f} / {b['map']:.4f} | {a['recall@100']:.4f} / "
                 f"{b['recall@100']:.4f} | {d['differ']} of {d['queries']} |")
    a, b = q["served (IVF-SQ8 candidates), float32"], q["served (IVF-SQ8 candidates), float16"]
    L += ["", f"Serving index at 44k ({a['products']:,} products, built in memory): {a['bytes_per_product']:,.0f} bytes/product "
          f"with float32 tables, {b['bytes_per_product']:,.0f} with float16 (ratio {b['bytes_per_product'] / a['bytes_per_product']:.2f}). "
          + (f"The transcript table holds {q['transcript_rows']:,} rows here." if "transcript_rows" in q else
             "This store has no transcripts, so the transcript table holds no rows here."), ""]
    if "million" in res:
        m = res["million"]
        L += [f"## Memory at {m['products']:,} products (synthetic: fashion44k replicated {m['copies']}x)", "",
              "Products with a vector per table: " + ", ".join(
                  f"{t} {v['rows_with_vector']:,} ({100 * v['share']:.0f}%{', synthetic from the title vector' if v['synthetic_from_title'] else ''})"
                  for t, v in m["tables"].items()) + ".", "",
              "| tables | embeddings | ANN (IVF-SQ8) | BM25 | row arrays | bytes / product | ratio to float32 |",
              "|---|---|---|---|---|---|---|"]
        base = m["float32"]["bytes_per_product"]
        for key in ("before this change (every row, float32; computed)", "float32", "float16",
                    "float16 loaded (5% room for new rows)"):
            v = m[key]
            mb = {k: x / 1e6 for k, x in v["memory_bytes"].items()}
            L.append(f"| {key} | {mb['embeddings']:,.0f} MB | {mb['ann']:,.0f} MB | {mb['bm25']:,.0f} MB | {mb['rows']:,.0f} MB | "
                     f"**{v['bytes_per_product']:,.0f}** | {v['bytes_per_product'] / base:.2f} |")
        L += ["", f"Build {m['build_seconds']:.0f} s, save {m['save_seconds']:.0f} s, load {m['load_seconds']:.0f} s; "
              f"on disk {m['disk_bytes'] / 1e9:.2f} GB. `float32` is the same index with the stored vectors at 4 bytes a "
              "value (array sizes computed, not allocated) and stores only the rows that have a vector (this change); "
              "the first row is the layout before it (every row of every table, zeros included), computed from the same "
              "dimensions and row count. `memory_bytes()` counts arrays and indexes, not the Python string objects of the "
              "records. Transcript texts are not synthesised (the transcript BM25 field stays empty).", ""]
    L += ["## Machine during the run", "", "```", res["machine"]["uptime"], res["machine"]["top"], "```", ""]
    (RESULTS / "table_memory.md").write_text("\n".join(L))


def model_about(model: Path) -> str:
    """What the model ranks with, from its directory: modalities, fusion and scorer, text encoder, scalar features."""
    from fusionrank.modeldir import ModelDir

    md = ModelDir.open(model)
    c, r = md.config(), md.load_ranker()
    args = dict(c.scorer.args)
    return (f"{'+'.join(c.modalities)}; {c.scorer.name} ranker {args.get('fusion', '')} {args.get('scorer', '')}".rstrip()
            + f"; text encoder {c.text_encoder_name}; {len(md.features(getattr(r, 'ranker', r)))} scalar features")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=HOME / "bench-clicks" / "models" / "full")
    ap.add_argument("--data", type=Path, default=get_settings().fashion44k_dir)
    ap.add_argument("--copies", type=int, default=23)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--work", type=Path, default=HOME / "scale-table-memory")
    a = ap.parse_args()
    t0 = time.time()
    res = {"command": "python " + " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "model": str(a.model), "model_about": model_about(a.model)}
    log("dev NDCG@10, float32 vs float16 tables (fashion44k, real data)")
    res["quality"], base = quality(a.model, a.data)
    if not a.skip_1m:
        log(f"memory at {a.copies}x the 44k catalogue (synthetic)")
        a.work.mkdir(parents=True, exist_ok=True)
        res["million"] = million(base, a.copies, a.sigma, a.work)
    res["machine"] = machine()
    res["seconds"] = time.time() - t0
    write(res)
    q = res["quality"]
    for path in ("served (IVF-SQ8 candidates)", "exact candidates"):
        x, y = q[f"{path}, float32"]["ndcg@10"], q[f"{path}, float16"]["ndcg@10"]
        log(f"{path}: NDCG@10 float32 {x:.4f}, float16 {y:.4f}, change {y - x:+.4f} (ratio {y / x:.4f})")
    if "million" in res:
        m = res["million"]
        f32, f16 = m["float32"]["bytes_per_product"], m["float16 loaded (5% room for new rows)"]["bytes_per_product"]
        log(f"{m['products']:,} products: {f16:,.0f} bytes/product with float16 tables (loaded), float32 {f32:,.0f} "
            f"(ratio {f16 / f32:.2f}); before this change {m['before this change (every row, float32; computed)']['bytes_per_product']:,.0f}")
    log(f"wrote {RESULTS / 'table_memory.md'}")


if __name__ == "__main__":
    main()
