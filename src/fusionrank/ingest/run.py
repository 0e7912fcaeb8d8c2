"""``ingest``: adapter -> validated, cleaned catalogue directory with a report."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from .. import schema as S
from ..errors import FusionrankError
from .adapters import AdapterOptions, adapter_options, get_adapter
from .catalog import Catalog, RejectsWriter, ingest_products, ingest_qrels, ingest_queries


def ingest(source: str | Path, out_dir: str | Path, adapter: str = "native", check_media: bool = True,
           on_bad_media: str = "drop_field", progress: bool = False,
           adapter_args: AdapterOptions | Mapping[str, Any] | None = None, **options: Any) -> Catalog:
    """Read ``source`` with the named adapter, validate every row and write ``out_dir``.

    ``adapter_args`` (a mapping, or the adapter's options model) and any further
    keyword arguments (e.g. ``limit=100``) are the adapter's options; they are
    validated against its options model before anything is read or written, and
    an unknown or ill-typed option raises :class:`~fusionrank.errors.AdapterOptionsError`
    naming the adapter, the bad key and the valid ones.

    Rejected rows and dropped media fields go to ``out_dir/rejects.jsonl``; the
    counts to ``out_dir/report.json``. Bad input (unreadable rows, damaged files)
    never ends the batch: it is counted and listed. Only an error about the source
    as a whole (e.g. a missing required column) is raised; ``report.json`` then
    says so (``"error"``) with the tables finished before it, and nothing else of
    the catalogue is written.
    """
    t0 = time.perf_counter()
    opts = adapter_options(adapter, adapter_args, **options)
    ad = get_adapter(adapter, source, opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = {"source": str(source), "adapter": adapter, "adapter_args": opts.model_dump(mode="json", exclude_defaults=True)}
    done: dict[str, Any] = {}
    with RejectsWriter(out / S.CATALOG_REJECTS_FILE) as rej:
        try:
            products, prep = ingest_products(ad.products(), rej, check_media=check_media, on_bad_media=on_bad_media, progress=progress)
            done["products"] = prep.as_dict()
            queries, qrep = ingest_queries(ad.queries(), rej)
            done["queries"] = qrep.as_dict()
            pids = set(products[S.PRODUCT_ID])
            qids = set(queries[S.QUERY_ID]) if len(queries) else None
            qrels, jrep = ingest_qrels(ad.qrels(), rej, product_ids=pids, query_ids=qids,
                                       skip_unknown_products=getattr(opts, "limit", None) is not None)
        except FusionrankError as e:
            failed = {**head, "error": str(e), "seconds": round(time.perf_counter() - t0, 2), **done,
                      "rejects_file": str(out / S.CATALOG_REJECTS_FILE)}
            (out / S.CATALOG_REPORT_FILE).write_text(json.dumps(failed, indent=2, default=str))
            raise
    report = {
        **head, "seconds": round(time.perf_counter() - t0, 2),
        "products": prep.as_dict(), "queries": qrep.as_dict(), "qrels": jrep.as_dict(),
        "rejects_file": str(out / S.CATALOG_REJECTS_FILE),
    }
    cat = Catalog(products, queries if len(queries) else None, qrels if len(qrels) else None, report)
    cat.save(out)
    return cat
