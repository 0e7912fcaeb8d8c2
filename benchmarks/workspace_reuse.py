"""Workspace reuse: preparing the same data through another path, and a catalogue sharing 90% of products.

One command (a few minutes on a loaded 2-core machine)::

    nice -n 15 .venv/bin/python benchmarks/workspace_reuse.py
    .venv/bin/python benchmarks/workspace_reuse.py --limit 500 --data /path/to/fashion44k

In a new temporary ``FUSIONRANK_HOME`` (deleted at the end), with the shipped fashion44k
config's text and image encoders (MiniLM on ``title`` and ``title_sparse``,
EfficientNet-Lite0 at 128 px, the image->text projection; no audio), times what ``train``
does before fitting, ``Workspace.catalog`` (ingest, with media checks) then
``Workspace.encode``:

1. **first**: the first ``--limit`` products of fashion44k (``--data``), from nothing;
2. **symlink**: the same folder through a symlink of another name: it resolves to the same
   workspace, so nothing is ingested or encoded;
3. **90% shared**: another source folder whose ``products.parquet`` holds products
   ``limit/10 .. limit/10 + limit`` of fashion44k (90% of them in the first catalogue; photos
   and clips through symlinks to the same files): a new workspace, whose text and photo
   vectors come from the home's content store for the shared products. The projection is
   trained per catalogue, so it is trained and applied again.

Each row gives ingest and encode wall time, their sum, the ratio of the sum to the first
run's, and the items encoded / taken from the shared content store / cached, summed over
features. Then ``check_encoded`` on the first catalogue, median of ``--reps`` calls: as
encode left the store (each feature's table and inputs as recorded in the manifest) and
row by row (the same catalogue in reverse order, whose inputs digest differs, so every
text hash and base hash is recomputed). If a full 44k-product workspace is prepared
(``--full``, default the first ``~/.cache/fusionrank/fashion44k-full*/``, only read): its
store is copied into the temporary home, ``encode_catalog`` runs on the copy with nothing
left to encode (what opening a model did on every call: it hashes every photo) and records
a manifest, and ``check_encoded`` is timed on the copy both ways.

Writes ``benchmarks/results/workspace_reuse.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def default_data() -> Path:
    shared = os.environ.get("FUSIONRANK_SHARED_DATA")
    return (Path(shared) if shared else ROOT.parent / "shared" / "data") / "fashion44k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5, help="check_encoded calls per measurement (median)")
    ap.add_argument("--full", type=Path, default=None, help="a prepared 44k workspace to check read-only "
                    "(default: the first ~/.cache/fusionrank/fashion44k-full*/ with a catalogue and a store)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "workspace_reuse.md")
    args = ap.parse_args()
    if not (args.data / "products.parquet").exists():
        sys.exit(f"{args.data}: fashion44k not found (pass --data)")

    tmp = Path(tempfile.mkdtemp(prefix="fusionrank-reuse-"))
    os.environ["FUSIONRANK_HOME"] = str(tmp / "home")
    import pandas as pd

    from fusionrank.encode import encode_catalog
    from fusionrank.errors import StaleArtefactError
    from fusionrank.experiment import ExperimentConfig
    from fusionrank.ingest import Catalog
    from fusionrank.workspace import Workspace, check_encoded

    cfg = ExperimentConfig.load(ROOT / "configs" / "fashion44k.toml")
    settings = cfg.encode_settings()
    settings.transcriber = settings.audio_features = None
    mods = ["text", "image"]
    quiet = lambda m: None  # noqa: E731

    def prepare(label: str, source: Path, limit: int | None) -> dict:
        ws = Workspace(source, "fashion44k", limit)
        t0 = time.perf_counter()
        cat = ws.catalog(log=quiet)
        t1 = time.perf_counter()
        s = ws.encode(cat.products, settings, log=quiet, progress=False, modalities=mods)
        t2 = time.perf_counter()
        row = {"run": label, "workspace": ws.root.name, "products": len(cat.products), "ingest_s": t1 - t0,
               "encode_s": t2 - t1, "total_s": t2 - t0,
               **{k: sum(j[k] for j in s["jobs"]) for k in ("encoded", "shared", "cached")}, "jobs": s["jobs"]}
        print(f"{label:12s} {row['total_s']:7.1f} s  encoded {row['encoded']:>6,}  shared {row['shared']:>6,}  "
              f"cached {row['cached']:>6,}  ({ws.root.name})", flush=True)
        return row | {"ws": ws, "cat": cat}

    def timed_check(products, store, reps) -> tuple[float, str]:
        times, outcome = [], "fresh"
        for _ in range(reps):
            t = time.perf_counter()
            try:
                check_encoded(products, store, settings, mods)
            except StaleArtefactError as e:
                outcome = "stale: " + "; ".join(e.problems)
            times.append(time.perf_counter() - t)
        return statistics.median(times), outcome

    try:
        rows = [prepare("first", args.data, args.limit)]
        link = tmp / "mnt" / "f44k-link"
        link.parent.mkdir(parents=True)
        link.symlink_to(args.data.resolve())
        rows.append(prepare("symlink", link, args.limit))
        # a second source: 10% of the products replaced by the next ones
        off = args.limit // 10
        second = tmp / "f44k-shifted"
        second.mkdir()
        pd.read_parquet(args.data / "products.parquet").iloc[off:off + args.limit].to_parquet(second / "products.parquet", index=False)
        for f in args.data.iterdir():  # photos, clips, queries and judgments: the same files
            if f.name != "products.parquet":
                (second / f.name).symlink_to(f.resolve())
        rows.append(prepare("90% shared", second, args.limit))  # the same limit: judgments of other products are skipped, as in the first
        shared = len(set(rows[0]["cat"].products["product_id"]) & set(rows[2]["cat"].products["product_id"]))

        first = rows[0]
        fast = timed_check(first["cat"].products, first["ws"].store_dir, args.reps)
        slow = timed_check(first["cat"].products.iloc[::-1], first["ws"].store_dir, args.reps)
        full = None
        cands = [args.full] if args.full else sorted((Path.home() / ".cache" / "fusionrank").glob("fashion44k-full*/"))
        for d in cands:
            if d and (d / "catalog" / "products.parquet").exists() and (d / "store").is_dir():
                print(f"copying {d / 'store'} (read-only) and re-running encode on the copy ...", flush=True)
                products = Catalog.load(d / "catalog").products
                store = tmp / "full-store"
                shutil.copytree(d / "store", store, ignore=shutil.ignore_patterns("audio.*", "transcript.*", "*.tmp*"))
                legacy = timed_check(products, store, args.reps)
                t = time.perf_counter()
                s = encode_catalog(products, store, settings, modalities=mods, progress=False, content_dir=None)
                noop = time.perf_counter() - t
                full = {"name": d.name, "products": len(products), "legacy": legacy, "noop_encode": noop,
                        "noop_encoded": sum(j["encoded"] for j in s["jobs"]),
                        "fast": timed_check(products, store, args.reps),
                        "slow": timed_check(products.iloc[::-1], store, args.reps)}
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]["total_s"]
    load = os.getloadavg()
    lines = [
        "# Workspace reuse: another path to the same data, a catalogue sharing 90% of products",
        "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/workspace_reuse.py', *sys.argv[1:]])}` on {date.today()}, "
        f"{platform.machine()} with {os.cpu_count()} cores (load average {load[0]:.1f} at the end: other jobs were running); "
        f"fashion44k, first {args.limit:,} products; text + image encoders of `configs/fashion44k.toml` "
        "(MiniLM on title and title_sparse, EfficientNet-Lite0 at 128 px, image->text projection trained per catalogue); "
        "a fresh temporary FUSIONRANK_HOME.",
        "",
        "| run | products | ingest s | encode s | encode / first | total s | total / first | encoded | from content store | cached (all) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['products']:,} | {r['ingest_s']:.1f} | {r['encode_s']:.1f} | "
                     f"{r['encode_s'] / rows[0]['encode_s']:.3f} | {r['total_s']:.1f} | "
                     f"{r['total_s'] / base:.3f} | {r['encoded']:,} | {r['shared']:,} | {r['cached']:,} |")
    lines += [
        "",
        f"The symlinked path resolved to the same workspace as the first run ({rows[1]['workspace'] == rows[0]['workspace']}); "
        f"the second catalogue shares {shared:,} of its {rows[2]['products']:,} products with the first and got its own "
        f"workspace ({rows[2]['workspace']}). Counts are summed over features (`encoded` + `cached` = items present; "
        "`from content store` is the part of `cached` taken from another workspace).",
        "",
        "Per feature, third run (90% shared):",
        "",
        "| feature | present | encoded | from content store | cached | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for j in rows[2]["jobs"]:
        lines.append(f"| {j['feature']} | {j['present']:,} | {j['encoded']:,} | {j['shared']:,} | {j['cached']:,} | {j['seconds']:.1f} |")
    jobs_s = sum(j["seconds"] for j in rows[2]["jobs"])
    lines += ["", f"The jobs take {jobs_s:.1f} s of that run's {rows[2]['encode_s']:.1f} s of encode; the rest is training the "
              "image->text projection of this catalogue for each title field (not shared, by design) and loading the models."]
    lines += [
        "",
        f"`check_encoded` (median of {args.reps} calls, text + image):",
        "",
        "| store | products | path | seconds | outcome |",
        "|---|---:|---|---:|---|",
        f"| first run's | {rows[0]['products']:,} | as encode left it (manifest) | {fast[0]:.3f} | {fast[1]} |",
        f"| first run's | {rows[0]['products']:,} | row by row (catalogue reordered) | {slow[0]:.3f} | {slow[1]} |",
    ]
    if full:
        n = f"{full['products']:,}"
        lines += [
            f"| copy of `{full['name']}` before encode | {n} | row by row (no manifest yet) | {full['legacy'][0]:.3f} | {full['legacy'][1][:300]} |",
            f"| same, after encode | {n} | as encode left it (manifest) | {full['fast'][0]:.3f} | {full['fast'][1][:300]} |",
            f"| same, after encode | {n} | row by row (catalogue reordered) | {full['slow'][0]:.3f} | {full['slow'][1][:300]} |",
            "",
            f"For comparison, `encode_catalog` on that copy with nothing to encode ({full['noop_encoded']} items encoded), "
            f"which hashes every photo and title (what opening a model called): {full['noop_encode']:.1f} s.",
        ]
    else:
        lines.append("| (no prepared 44k workspace found) | | | | |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
