"""Turn adapter output into a validated catalogue directory.

A catalogue directory (written by ``fusionrank ingest``) holds::

    products.parquet   canonical products (schema.PRODUCT_SCHEMA)
    queries.tsv        query_id, query[, split]
    qrels.tsv          query_id, product_id, grade
    rejects.jsonl      one line per rejected row, dropped media field or row read with invalid UTF-8
                       replaced (kind "encoding"), with file, row, field, reason, record
    report.json        the ValidationReport of products, queries and qrels
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema as S
from ..errors import FusionrankError, RowError
from .media import check_audio, check_image
from .readers import ReadNote, collect_notes
from .validate import ValidationReport, content_signature, id_problem, validate_product

Record = tuple[str, int, "dict[str, Any] | RowError"]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def _reason_key(e: RowError) -> str:
    """A reason with the row's own values elided, so the report groups like with like."""
    base = _QUOTED.sub("…", e.reason.split(":")[0])
    return f"{e.field}: {base}" if e.field else base


class RejectsWriter:
    """Appends rejected rows (with the original record) to a JSONL file."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._f = open(self.path, "w", encoding="utf-8") if self.path else None
        self.count = 0

    def write(self, kind: str, err: RowError, record: Any = None) -> None:
        self.count += 1
        if self._f is not None:
            line = {"kind": kind, **err.as_dict(), "record": record}
            try:
                text = json.dumps(line, ensure_ascii=False, default=str)
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from JSON escapes: keep them as \u escapes
                text = json.dumps(line, ensure_ascii=True, default=str)
            except (ValueError, TypeError, RecursionError):
                line["record"] = repr(record)[:10_000]
                text = json.dumps(line, ensure_ascii=True, default=str)
            self._f.write(text + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def guarded(records: Iterable[Record], source: str) -> Iterator[Record]:
    """``records``, but an unexpected exception of the reader or adapter ends them with one reject.

    The reject names the file and the row after the last one read and the reason;
    what was read before is kept and the rest of the batch goes on. Errors the
    user must act on before anything can be read (:class:`FusionrankError`, e.g.
    a missing required column) still propagate.
    """
    file, row = source, -1
    it = iter(records)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except FusionrankError:
            raise
        except Exception as e:
            yield file, row + 1, RowError(file, row + 1, None, f"reading stopped by an unexpected error: {type(e).__name__}: {e}"[:1000])
            return
        file, row = item[0], item[1]
        yield item


_NO_HITS: set = set()


class _Notes:
    """Counts the reader's repair notes (invalid UTF-8 replaced) of one table and writes them as rejects."""

    def __init__(self, notes: list[ReadNote], rep: ValidationReport, rejects: RejectsWriter):
        self.notes, self.rep, self.rejects = notes, rep, rejects
        self.last: dict[str, int] = {}

    def seen(self, file: str, row: int) -> set[tuple[str, int | None]]:
        """Flush the notes of rows read so far; the (file, row) pairs that had any."""
        if not self.notes:  # the common case, once per row: keep it cheap
            return _NO_HITS
        self.last[file] = max(self.last.get(file, -1), row)
        return self.flush()

    def flush(self, final: bool = False) -> set[tuple[str, int | None]]:
        hit: set[tuple[str, int | None]] = set()
        keep = []
        for n in self.notes:
            if final and n.row is not None and n.row > self.last.get(n.file, -1):
                continue  # a row the adapter never took (e.g. past its limit)
            if not final and n.row is not None and n.row > self.last.get(n.file, -1):
                keep.append(n)
                continue
            if (n.file, n.row) not in hit:
                self.rep.utf8_replaced += 1
                hit.add((n.file, n.row))
            self.rejects.write("encoding", RowError(n.file, n.row, None, n.reason))
        self.notes[:] = keep
        return hit


def _check_media(products: list[dict], locs: list[tuple[str, int]], threads: int) -> list[list[tuple[str, str]]]:
    """For every product, the list of (field, reason) of media that failed to decode."""

    def one(p: dict) -> list[tuple[str, str]]:
        bad = []
        for fld, check in ((S.IMAGE, check_image), (S.AUDIO, check_audio)):
            if p.get(fld):
                try:
                    r = check(p[fld])
                except Exception as e:  # a check must never end the batch
                    r = f"{fld} unreadable: {type(e).__name__}: {e}"
                if r:
                    bad.append((fld, r))
        return bad

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        return list(ex.map(one, products, chunksize=256))


def ingest_products(
    records: Iterable[Record],
    rejects: RejectsWriter,
    check_media: bool = True,
    on_bad_media: str = "drop_field",
    threads: int = 4,
    progress: bool = False,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate, clean and de-duplicate product records.

    Duplicate ids whose cleaned content is identical are merged (counted in
    ``merged``); a duplicate id with different content is rejected, naming the
    row that was kept. Returns the products frame (in first-seen order) and the report.
    """
    if on_bad_media not in ("drop_field", "reject_row"):
        raise FusionrankError(f"on_bad_media must be 'drop_field' or 'reject_row', got {on_bad_media!r}")
    rep = ValidationReport()
    kept: dict[str, dict] = {}
    where: dict[str, tuple[str, int]] = {}
    sigs: dict[str, str] = {}
    fixed_ids: set[str] = set()
    files: list[str] = []
    it: Iterable[Record] = records
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(records, desc="validate products", unit="row", mininterval=1.0)
    with collect_notes() as raw_notes:
        notes = _Notes(raw_notes, rep, rejects)
        for file, row, rec in guarded(it, "products"):
            if file not in files:
                files.append(file)
            rep.read += 1
            replaced = (file, row) in notes.seen(file, row)
            if isinstance(rec, RowError):
                rep.rejected += 1
                rep.reject_reasons[_reason_key(rec)] += 1
                rejects.write("product", rec)
                continue
            try:
                p, fixes = validate_product(rec, file, row)
            except RowError as e:
                rep.rejected += 1
                rep.reject_reasons[_reason_key(e)] += 1
                rejects.write("product", e, rec)
                continue
            except Exception as e:  # a validation bug must not end the batch
                e = RowError(file, row, None, f"unexpected error: {type(e).__name__}: {e}"[:1000])
                rep.rejected += 1
                rep.reject_reasons[_reason_key(e)] += 1
                rejects.write("product", e, rec)
                continue
            if replaced:
                fixes.append("row: invalid UTF-8 replaced by U+FFFD")
            _keep_product(p, fixes, file, row, rec, rep, rejects, kept, where, sigs, fixed_ids)
        notes.flush(final=True)
    rep.files = files
    products = list(kept.values())
    if check_media and products:
        locs = [where[p[S.PRODUCT_ID]] for p in products]
        bad = _check_media(products, locs, threads)
        keep_mask = [True] * len(products)
        for i, (p, problems) in enumerate(zip(products, bad)):
            if not problems:
                continue
            f, r = locs[i]
            for fld, reason in problems:
                e = RowError(f, r, fld, reason)
                rep.media_reasons[f"{fld}: {reason.split(':')[0]}"] += 1
                if on_bad_media == "drop_field":
                    rejects.write("media", e, {S.PRODUCT_ID: p[S.PRODUCT_ID], fld: p[fld]})
                    p[fld] = None
                    rep.media_dropped += 1
                    fixed_ids.add(p[S.PRODUCT_ID])
            if on_bad_media == "reject_row":
                e = RowError(f, r, problems[0][0], problems[0][1])
                rep.rejected += 1
                rep.reject_reasons[_reason_key(e)] += 1
                rejects.write("product", e, p)
                keep_mask[i] = False
        products = [p for p, k in zip(products, keep_mask) if k]
    rep.kept = len(products)
    rep.fixed = len(fixed_ids & {p[S.PRODUCT_ID] for p in products})
    rep.check()
    return products_frame(products), rep


def _keep_product(p: dict, fixes: list[str], file: str, row: int, rec: Any, rep: ValidationReport,
                  rejects: RejectsWriter, kept: dict, where: dict, sigs: dict, fixed_ids: set) -> None:
    pid = p[S.PRODUCT_ID]
    sig = content_signature(p)
    if pid in kept:
        if sigs[pid] == sig:
            rep.merged += 1
            return
        f0, r0 = where[pid]
        e = RowError(file, row, S.PRODUCT_ID, f"duplicate product id {pid!r} with different content (kept {f0}, row {r0})")
        rep.rejected += 1
        rep.reject_reasons[_reason_key(e)] += 1
        rejects.write("product", e, rec)
        return
    kept[pid], where[pid], sigs[pid] = p, (file, row), sig
    if fixes:
        fixed_ids.add(pid)
        for f in set(fx.split(":")[0].split("[")[0] + ": " + fx.split(": ", 1)[1] for fx in fixes):
            rep.fix_reasons[f] += 1


def products_frame(products: list[dict]) -> pd.DataFrame:
    """Canonical products DataFrame (attributes as a dict column)."""
    if not products:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in S.PRODUCT_COLUMNS})
    return pd.DataFrame(products, columns=list(S.PRODUCT_COLUMNS))


def _text_id(v: Any) -> str | None:
    """An id read from a file as text (integral numbers as their digits); None when missing."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e18:
        return str(int(v))
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        try:
            return str(v)
        except ValueError:
            return "9" * 1000  # thousands of digits: refused as too long
    return None


def ingest_queries(records: Iterable[Record], rejects: RejectsWriter) -> tuple[pd.DataFrame, ValidationReport]:
    rep = ValidationReport()
    out: dict[str, dict] = {}
    with collect_notes() as raw_notes:
        notes = _Notes(raw_notes, rep, rejects)
        for file, row, rec in guarded(records, "queries"):
            rep.read += 1
            notes.seen(file, row)
            try:
                if isinstance(rec, RowError):
                    raise rec
                qid, q = rec.get(S.QUERY_ID), rec.get(S.QUERY)
                if qid is not None and not isinstance(qid, (str, int, float)) or isinstance(qid, bool):
                    raise RowError(file, row, S.QUERY_ID, f"expected text, got {type(qid).__name__}")
                qid = _text_id(qid)
                if qid is None or qid.strip() == "":
                    raise RowError(file, row, S.QUERY_ID, "missing query id")
                why = id_problem(qid)
                if why:
                    raise RowError(file, row, S.QUERY_ID, f"query id {why}: {qid!r}")
                if q is None or isinstance(q, bool) or not isinstance(q, (str, int, float)) or str(q).strip() == "":
                    raise RowError(file, row, S.QUERY, "missing query text")
                q = " ".join(str(q).split())
                try:
                    q.encode("utf-8")
                except UnicodeEncodeError:
                    raise RowError(file, row, S.QUERY, "not valid Unicode (a lone surrogate)") from None
                if qid in out:
                    if out[qid][S.QUERY] == q:
                        rep.merged += 1
                        continue
                    raise RowError(file, row, S.QUERY_ID, f"duplicate query id {qid!r} with a different query text")
                split = rec.get("split")
                if split and (not isinstance(split, (str, int)) or not str(split).isprintable()):
                    raise RowError(file, row, "split", f"expected a split name, got {split!r}")
                out[qid] = {S.QUERY_ID: qid, S.QUERY: q, **({"split": str(split)} if split else {})}
            except RowError as e:
                rep.rejected += 1
                rep.reject_reasons[_reason_key(e)] += 1
                rejects.write("query", e, rec if not isinstance(rec, RowError) else None)
        notes.flush(final=True)
    rep.kept = len(out)
    rep.check()
    df = pd.DataFrame(list(out.values()))
    if df.empty:
        df = pd.DataFrame(columns=list(S.QUERY_COLUMNS))
    return df, rep


def _ids(col: pd.Series) -> pd.Series:
    """Ids as text, never stripped (integral numbers as their digits; other types missing)."""
    if pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty"):
        return col.astype("string")
    return col.astype(object).map(_text_id).astype("string")


def _bad_ids(ids: pd.Series) -> pd.Series:
    """Mask of ids that are present but refused by :func:`id_problem` (checked once per distinct id)."""
    bad = [v for v in pd.unique(ids.dropna().to_numpy()) if v.strip() and id_problem(v)]
    return ids.isin(bad) if bad else pd.Series(False, index=ids.index)


def _grades(col: pd.Series) -> pd.Series:
    if pd.api.types.infer_dtype(col, skipna=True) in ("string", "integer", "floating", "mixed-integer-float", "empty"):
        return pd.to_numeric(col, errors="coerce").astype("float64")
    return col.astype(object).map(_grade_number).astype("float64")


def _grade_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return None
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (ValueError, OverflowError):
        return None


#: Largest grade accepted (judgments are stored as int32).
MAX_GRADE = 2**31 - 1


def ingest_qrels(records: Iterable[Record], rejects: RejectsWriter, product_ids: set[str] | None = None,
                 query_ids: set[str] | None = None, chunk: int = 500_000,
                 skip_unknown_products: bool = False) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate judgments, vectorised over chunks of records.

    Grades must be integers >= 0. A judgment for an unknown product or query is
    rejected (reported), not kept dangling; repeated identical judgments are merged,
    conflicting ones rejected. With ``skip_unknown_products`` (used when only a
    subset of the catalogue is ingested) judgments of products outside it are
    counted as skipped instead of rejected.
    """
    rep = ValidationReport()
    frames: list[pd.DataFrame] = []
    buf_file: list[str] = []
    buf_row: list[int] = []
    buf: list[dict] = []

    def reject(e: RowError, rec: Any = None) -> None:
        rep.rejected += 1
        rep.reject_reasons[_reason_key(e)] += 1
        rejects.write("qrel", e, rec)

    def flush() -> None:
        if not buf:
            return
        df = pd.DataFrame.from_records(buf, columns=list(S.QREL_COLUMNS))
        df["_file"], df["_row"] = buf_file, buf_row
        buf.clear(); buf_file.clear(); buf_row.clear()
        q, p, g = _ids(df[S.QUERY_ID]), _ids(df[S.PRODUCT_ID]), _grades(df[S.GRADE])
        qbad, pbad = _bad_ids(q), _bad_ids(p)
        checks = [
            (q.isna() | (q.str.strip() == ""), S.QUERY_ID, lambda r: "missing query id"),
            (p.isna() | (p.str.strip() == ""), S.PRODUCT_ID, lambda r: "missing product id"),
            (qbad, S.QUERY_ID, lambda r: f"query id {id_problem(_text_id(r[S.QUERY_ID]))}: {r[S.QUERY_ID]!r}"),
            (pbad, S.PRODUCT_ID, lambda r: f"product id {id_problem(_text_id(r[S.PRODUCT_ID]))}: {r[S.PRODUCT_ID]!r}"),
            (g.isna() | (g % 1 != 0) | (g < 0) | (g > MAX_GRADE), S.GRADE,
             lambda r: f"grade must be an integer from 0 to {MAX_GRADE}, got {r[S.GRADE]!r}"),
        ]
        if query_ids is not None:
            checks.append((~q.isin(query_ids), S.QUERY_ID, lambda r: f"unknown query id {r[S.QUERY_ID]!r}"))
        if product_ids is not None:
            checks.append((~p.isin(product_ids), S.PRODUCT_ID, lambda r: f"unknown product id {r[S.PRODUCT_ID]!r}"))
        bad = pd.Series(False, index=df.index)
        for mask, fld, why in checks:
            mask = mask.fillna(True) & ~bad
            if skip_unknown_products and fld == S.PRODUCT_ID and product_ids is not None and why is checks[-1][2]:
                n = int(mask.sum())
                rep.skipped += n
                if n:
                    rep.skip_reasons["product outside the ingested subset"] += n
            else:
                for r in df[mask].to_dict("records"):
                    reject(RowError(r["_file"], int(r["_row"]), fld, why(r)), {c: r[c] for c in S.QREL_COLUMNS})
            bad |= mask
        good = df[~bad]
        frames.append(pd.DataFrame({S.QUERY_ID: q[~bad].astype(str), S.PRODUCT_ID: p[~bad].astype(str),
                                    S.GRADE: g[~bad].astype("int32"), "_file": good["_file"], "_row": good["_row"]}))

    with collect_notes() as raw_notes:
        notes = _Notes(raw_notes, rep, rejects)
        for file, row, rec in guarded(records, "qrels"):
            rep.read += 1
            notes.seen(file, row)
            if isinstance(rec, RowError):
                reject(rec)
                continue
            buf.append(rec); buf_file.append(file); buf_row.append(row)
            if len(buf) >= chunk:
                flush()
        flush()
        notes.flush(final=True)
    if frames:
        allq = pd.concat(frames, ignore_index=True)
    else:
        allq = pd.DataFrame({S.QUERY_ID: [], S.PRODUCT_ID: [], S.GRADE: pd.array([], dtype="int32"), "_file": [], "_row": []})
    dup = allq.duplicated([S.QUERY_ID, S.PRODUCT_ID], keep="first")
    if dup.any():
        exact = allq.duplicated([S.QUERY_ID, S.PRODUCT_ID, S.GRADE], keep="first")
        rep.merged += int(exact.sum())
        conflict = dup & ~exact
        for _, r in allq[conflict].iterrows():
            reject(RowError(r["_file"], int(r["_row"]), S.GRADE, f"conflicting grade for query {r[S.QUERY_ID]!r}, product {r[S.PRODUCT_ID]!r}"),
                   {c: r[c] for c in S.QREL_COLUMNS})
        allq = allq[~dup]
    rep.kept = len(allq)
    rep.check()
    return allq[list(S.QREL_COLUMNS)].reset_index(drop=True), rep


@dataclass
class Catalog:
    """A validated catalogue: products plus optional queries and judgments."""

    products: pd.DataFrame
    queries: pd.DataFrame | None = None
    qrels: pd.DataFrame | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        df = self.products.copy()
        # dtype=object: an empty catalogue would otherwise get a float64 column that pyarrow cannot turn into a map
        df[S.ATTRIBUTES] = pd.Series([list((a or {}).items()) for a in df[S.ATTRIBUTES]], index=df.index, dtype=object)
        table = pa.Table.from_pandas(df[list(S.PRODUCT_COLUMNS)], schema=S.PRODUCT_SCHEMA, preserve_index=False)
        tmp = d / (S.CATALOG_PRODUCTS_FILE + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(d / S.CATALOG_PRODUCTS_FILE)
        if self.queries is not None:
            self.queries.to_csv(d / S.CATALOG_QUERIES_FILE, sep="\t", index=False)
        if self.qrels is not None:
            self.qrels.to_csv(d / S.CATALOG_QRELS_FILE, sep="\t", index=False)
        (d / S.CATALOG_REPORT_FILE).write_text(json.dumps(self.report, indent=2, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Catalog":
        d = Path(directory)
        f = d / S.CATALOG_PRODUCTS_FILE
        if not f.exists():
            raise FusionrankError(f"{d}: not a catalogue directory (no {S.CATALOG_PRODUCTS_FILE}); run `fusionrank ingest` first")
        products = pq.read_table(f).to_pandas()
        products[S.ATTRIBUTES] = [dict(a) if a is not None else {} for a in products[S.ATTRIBUTES]]
        queries = qrels = None
        if (d / S.CATALOG_QUERIES_FILE).exists():
            queries = pd.read_csv(d / S.CATALOG_QUERIES_FILE, sep="\t", dtype=str, keep_default_na=False)
        if (d / S.CATALOG_QRELS_FILE).exists():
            qrels = pd.read_csv(d / S.CATALOG_QRELS_FILE, sep="\t", dtype={S.QUERY_ID: str, S.PRODUCT_ID: str, S.GRADE: "int32"})
        rep = json.loads((d / S.CATALOG_REPORT_FILE).read_text()) if (d / S.CATALOG_REPORT_FILE).exists() else {}
        return cls(products, queries, qrels, rep)


def with_title_field(products: pd.DataFrame, title_field: str) -> pd.DataFrame:
    """Return products whose ``title`` is taken from ``title_field`` (a column or an attribute).

    Used for catalogue variants such as fashion44k's ``title_sparse``; products
    lacking the field keep their title.
    """
    if title_field == S.TITLE:
        return products
    out = products.copy()
    if title_field in out.columns:
        alt = out[title_field]
    else:
        alt = pd.Series([(a or {}).get(title_field) for a in out[S.ATTRIBUTES]], index=out.index)
        if alt.isna().all():
            raise FusionrankError(f"title field {title_field!r} is neither a column nor an attribute of any product")
    out[S.TITLE] = alt.where(alt.notna() & (alt.astype(str).str.len() > 0), out[S.TITLE])
    return out


def read_catalog_queries(path: str | Path) -> pd.DataFrame:
    """Read a ``query_id, query`` TSV (plain or .gz) into a validated frame; raises on bad rows."""
    from .readers import iter_records

    rej = RejectsWriter(None)
    df, rep = ingest_queries(((str(path), r, rec) for r, rec in iter_records(path, "tsv")), rej)
    if rep.rejected:
        raise FusionrankError(f"{path}: {rep.rejected} bad query row(s): {dict(rep.reject_reasons)}")
    return df


def read_catalog_qrels(path: str | Path) -> pd.DataFrame:
    """Read a ``query_id, product_id, grade`` TSV (plain or .gz), fast path via pandas."""
    df = pd.read_csv(path, sep="\t", dtype={S.QUERY_ID: str, S.PRODUCT_ID: str}, compression="infer")
    missing = [c for c in S.QREL_COLUMNS if c not in df.columns]
    if missing:
        from ..errors import SchemaError

        raise SchemaError(str(path), missing, list(df.columns))
    bad = df[S.GRADE].isna() | (pd.to_numeric(df[S.GRADE], errors="coerce") % 1 != 0)
    if bad.any():
        r = int(bad.idxmax())
        raise RowError(str(path), r, S.GRADE, f"grade must be an integer, got {df[S.GRADE].iloc[r]!r}")
    df[S.GRADE] = df[S.GRADE].astype("int32")
    return df[list(S.QREL_COLUMNS)]
