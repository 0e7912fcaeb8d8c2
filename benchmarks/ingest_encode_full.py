"""Ingest + encode all of fashion44k, then run both again with nothing changed.

    .venv/bin/python benchmarks/ingest_encode_full.py [--home DIR] [--fresh]

Prints counts, rejects, wall time and throughput per modality for the first run
and the time of the second (cached) run beside it, as a ratio. With ``--fresh`` the
first run starts from an empty home (about 70 minutes on 2 cores: speech-to-text of
13,222 clips dominates); without it, the first-run figures are read from the
``encode_summary.json`` the first run left in the store, and only the re-run is timed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUSIONRANK = str(Path(sys.executable).parent / "fusionrank")


def run(cmd: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return dt, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion44k"))
    ap.add_argument("--home", default=str(Path.home() / ".cache" / "fusionrank" / "fashion44k-full"))
    ap.add_argument("--fresh", action="store_true", help="first run into a new empty folder")
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fusionrank-bench-")) if args.fresh else Path(args.home)
    cat, store = home / "catalog", home / "store"
    first = {}
    if args.fresh or not (store / "encode_summary.json").exists():
        first["ingest_s"], first["ingest"] = run([FUSIONRANK, "ingest", args.data, "--adapter", "fashion44k", "--out", str(cat), "--json"])
        first["encode_s"], first["encode"] = run([FUSIONRANK, "encode", str(cat), "--store", str(store), "--json", "--processes", str(args.processes)])
    else:
        first["ingest"] = json.loads((cat / "report.json").read_text())
        first["ingest_s"] = first["ingest"]["seconds"]
        first["encode"] = json.loads((store / "encode_summary.json").read_text())
        first["encode_s"] = first["encode"]["seconds"]
        print(f"(first-run figures read from {store / 'encode_summary.json'})")
    # the cached encode summary is overwritten by the re-run: keep the first one
    (home / "encode_summary.first.json").write_text(json.dumps(first["encode"], indent=1)) if not (home / "encode_summary.first.json").exists() else None
    first_enc = json.loads((home / "encode_summary.first.json").read_text())
    second_ingest_s, _ = run([FUSIONRANK, "ingest", args.data, "--adapter", "fashion44k", "--out", str(home / "catalog-rerun"), "--json"])
    second_encode_s, second = run([FUSIONRANK, "encode", str(cat), "--store", str(store), "--json"])
    rep = first["ingest"]
    print("\ningest (all of fashion44k)")
    for t in ("products", "queries", "qrels"):
        r = rep[t]
        print(f"  {t:9s} read {r['read']:>9,}  kept {r['kept']:>9,}  fixed {r['fixed']:>6,}  rejected {r['rejected']:>5,}  "
              f"merged {r['merged_duplicates']:>4,}  media dropped {r['media_dropped']:>4,}")
    print(f"  wall time {first['ingest_s']:.1f} s (re-run into a new folder: {second_ingest_s:.1f} s)")
    print("\nencode, first run vs second run with nothing changed")
    print(f"  {'feature':28s} {'modality':8s} {'present':>8s} {'encoded':>8s} {'failed':>6s} {'first s':>8s} {'items/s':>8s} {'second s':>9s} {'cached':>8s}")
    sec = {j["feature"]: j for j in second["jobs"]}
    for j in first_enc["jobs"]:
        s = sec.get(j["feature"], {})
        print(f"  {j['feature']:28s} {j['modality']:8s} {j['present']:>8,} {j['encoded']:>8,} {j['failed']:>6,} {j['seconds']:>8.1f} "
              f"{j['items_per_second']:>8.1f} {s.get('seconds', float('nan')):>9.2f} {s.get('cached', 0):>8,}")
    print(f"  total: first {first_enc['seconds']:.0f} s, second {second_encode_s:.1f} s (wall, incl. start-up) "
          f"-> second/first = {second_encode_s / first_enc['seconds']:.4f}")


if __name__ == "__main__":
    main()
