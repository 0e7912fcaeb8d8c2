"""Input normalisation: qrels and runs as DataFrames or nested dicts -> one canonical form.

Two input forms are accepted for both judgments (qrels) and runs:

* a :class:`pandas.DataFrame` with columns ``query_id, product_id, grade`` (qrels) or
  ``query_id, product_id, score`` (run); extra columns are ignored;
* a nested mapping ``{query_id: {product_id: grade_or_score}}`` (the pytrec_eval /
  ir_measures dict-of-dict form).

:func:`to_frame` is the single place that converts either form. It returns a
DataFrame with exactly three columns, ids as ``str`` (ids are always compared as
strings, like trec_eval does, so ``7`` and ``"7"`` are the same query), grades as
``int64`` (must be integral and >= 0) and scores as ``float64`` (must be finite).
Duplicate ``(query_id, product_id)`` pairs are an error, not silently merged.

:func:`prepare` then ranks the run once (see :class:`Prepared` for the tie rule) so
that several metrics can be computed from the same ranking without re-sorting.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..schema import GRADE, PRODUCT_ID, QUERY_ID, SCORE

__all__ = ["to_frame", "as_qrels", "as_run", "Prepared", "prepare"]


def _normalise(data: pd.DataFrame | Mapping, value: str) -> tuple[pd.Series, pd.Series, np.ndarray]:
    """Validate and convert to ``(query_id: Series[str], product_id: Series[str], values)``.

    Everything :func:`to_frame` checks except duplicates (checked by the callers).
    """
    if value not in (GRADE, SCORE):
        raise ValueError(f"value must be {GRADE!r} (qrels) or {SCORE!r} (run), got {value!r}")
    what = "qrels" if value == GRADE else "run"
    if isinstance(data, pd.DataFrame):
        missing = [c for c in (QUERY_ID, PRODUCT_ID, value) if c not in data.columns]
        if missing:
            raise ValueError(f"{what} DataFrame is missing column(s) {missing}; found {list(data.columns)}")
        qid = data[QUERY_ID].astype(str).reset_index(drop=True)
        pid = data[PRODUCT_ID].astype(str).reset_index(drop=True)
        val = data[value].to_numpy()
    elif isinstance(data, Mapping):
        qid_l, pid_l, val_l = [], [], []
        for q, docs in data.items():
            if not isinstance(docs, Mapping):
                raise TypeError(f"{what} dict must be {{query_id: {{product_id: {value}}}}}; query {q!r} maps to {type(docs).__name__}")
            qs = str(q)
            for p, v in docs.items():
                qid_l.append(qs)
                pid_l.append(str(p))
                val_l.append(v)
        qid = pd.Series(qid_l, dtype=str)
        pid = pd.Series(pid_l, dtype=str)
        val = np.array(val_l, dtype=np.float64 if value == SCORE else None)
        if val.size == 0:
            val = val.astype(np.float64)
    else:
        raise TypeError(f"{what} must be a pandas DataFrame or a dict {{query_id: {{product_id: {value}}}}}, got {type(data).__name__}")

    if value == GRADE:
        val = _as_grades(val)
    else:
        try:
            val = np.asarray(val, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"run scores must be numeric: {exc}") from None
        bad = ~np.isfinite(val)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"run has {int(bad.sum())} non-finite score(s), e.g. query {qid[i]!r} product {pid[i]!r}: {val[i]}")
    return qid, pid, val


def _duplicate_error(what: str, qid: pd.Series, pid: pd.Series, dup: np.ndarray) -> ValueError:
    ex = list(zip(qid[dup].head(3), pid[dup].head(3)))
    return ValueError(f"{what} has {int(dup.sum())} duplicate (query_id, product_id) pair(s), e.g. {ex}")


def to_frame(data: pd.DataFrame | Mapping, value: str) -> pd.DataFrame:
    """Convert qrels (``value="grade"``) or a run (``value="score"``) to a canonical DataFrame.

    Parameters
    ----------
    data:
        DataFrame with columns ``query_id, product_id, <value>``, or a mapping
        ``{query_id: {product_id: value}}``.
    value:
        :data:`fusionrank.schema.GRADE` for qrels or :data:`fusionrank.schema.SCORE` for a run.

    Returns
    -------
    DataFrame with columns ``[query_id (str), product_id (str), value]`` where ``value`` is
    ``int64`` for grades and ``float64`` for scores, in input order, with a fresh RangeIndex.

    Raises
    ------
    ValueError
        Missing columns, duplicate ``(query_id, product_id)`` pairs, non-integral or
        negative grades, or non-finite scores.
    TypeError
        ``data`` is neither a DataFrame nor a mapping.
    """
    qid, pid, val = _normalise(data, value)
    out = pd.DataFrame({QUERY_ID: qid, PRODUCT_ID: pid, value: val})
    dup = out.duplicated([QUERY_ID, PRODUCT_ID]).to_numpy()
    if dup.any():
        raise _duplicate_error("qrels" if value == GRADE else "run", qid, pid, dup)
    return out


def _as_grades(val) -> np.ndarray:
    arr = np.asarray(val)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"qrels grades must be integers: {exc}") from None
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("qrels grades must be integers (found non-integral or non-finite values)")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"qrels grades must be >= 0 (found {int(arr.min())})")
    return arr


def as_qrels(qrels: pd.DataFrame | Mapping) -> pd.DataFrame:
    """``to_frame(qrels, "grade")``."""
    return to_frame(qrels, GRADE)


def as_run(run: pd.DataFrame | Mapping) -> pd.DataFrame:
    """``to_frame(run, "score")``."""
    return to_frame(run, SCORE)


@dataclass(frozen=True)
class Prepared:
    """A run ranked against qrels, as flat numpy arrays (computed once, shared by all metrics).

    Queries are the **qrels** queries, sorted by ``query_id`` (string order); query ``i``
    is ``query_ids[i]``. Run rows of queries that are not in the qrels are dropped.

    Ranking (tie rule, identical to trec_eval / pytrec_eval): within each query, products
    are sorted by ``score`` descending, and equal scores by ``product_id`` **descending**
    in string (code-point, i.e. ``strcmp`` on UTF-8) order. So for tied scores ``"p9"``
    ranks above ``"p10"`` and ``"b"`` above ``"a"``. Ranks are 1-based.

    Attributes (``R`` = retained run rows, ``J`` = qrels rows)
    ----------
    query_ids: ``object[nq]`` sorted qrels query ids.
    q, rank, grade: ``int64[R]`` query index, 1-based rank and grade (0 if the product is
        unjudged) of each retrieved product, sorted by ``(q, rank)``.
    judged_q, judged_grade: ``int64[J]`` query index and grade of every judged product.
    n_ret: ``int64[nq]`` number of retrieved products per query (0 if absent from the run).
    """

    query_ids: np.ndarray
    q: np.ndarray
    rank: np.ndarray
    grade: np.ndarray
    judged_q: np.ndarray
    judged_grade: np.ndarray
    n_ret: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def num_rel(self, rel_level: int = 1) -> np.ndarray:
        """``int64[nq]``: number of judged products with ``grade >= rel_level`` per query."""
        keep = self.judged_grade >= rel_level
        return np.bincount(self.judged_q[keep], minlength=self.n_queries)

    def series(self, values: np.ndarray, name: str | None = None) -> pd.Series:
        """Wrap per-query values ``[nq]`` in a Series indexed by ``query_id``."""
        return pd.Series(values, index=pd.Index(self.query_ids, name=QUERY_ID, dtype=object), name=name)


def prepare(qrels: pd.DataFrame | Mapping | Prepared, run: pd.DataFrame | Mapping | None = None) -> Prepared:
    """Normalise ``qrels`` and ``run`` and rank the run (see :class:`Prepared`).

    Passing an already :class:`Prepared` object (with ``run=None``) returns it unchanged,
    which lets :func:`fusionrank.metrics.evaluate` share one ranking between metrics.
    Cost: one ``lexsort`` of the run plus a sorted-key join with the qrels, O(R log R).
    """
    if isinstance(qrels, Prepared):
        if run is not None:
            raise ValueError("pass either a Prepared object (with run=None) or qrels and run, not both")
        return qrels
    if run is None:
        raise ValueError("run is required")
    jqid, jpid, jgrade = _normalise(qrels, GRADE)
    rqid, rpid, rscore = _normalise(run, SCORE)
    J = len(jqid)

    # Query ids -> codes in string order; keep only qrels queries (run-only queries are ignored).
    qcodes, quniq = pd.factorize(pd.concat([jqid, rqid], ignore_index=True), sort=True)
    is_judged_q = np.bincount(qcodes[:J], minlength=len(quniq)) > 0
    qpos = np.cumsum(is_judged_q) - 1
    query_ids = np.asarray(quniq, dtype=object)[is_judged_q]
    nq = len(query_ids)
    jq = qpos[qcodes[:J]].astype(np.int64)
    rc = qcodes[J:]
    keep = is_judged_q[rc]
    rq = qpos[rc[keep]].astype(np.int64)
    r_score = rscore[keep]

    # Product ids -> integer codes whose order is the string order (sort=True), shared by run and qrels.
    pcodes, puniq = pd.factorize(pd.concat([jpid, rpid], ignore_index=True), sort=True)
    pcodes = pcodes.astype(np.int64)
    j_code, r_code = pcodes[:J], pcodes[J:][keep]
    n_codes = max(len(puniq), 1)

    # Rank: query asc, score desc, product_id desc (np.lexsort: last key is primary).
    order = np.lexsort((-r_code, -r_score, rq))
    q_sorted = rq[order]
    code_sorted = r_code[order]
    n = len(q_sorted)
    starts = np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]]) if n else np.zeros(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.arange(n, dtype=np.int64) - group_start + 1
    r_key = q_sorted * n_codes + code_sorted
    r_key_sorted = np.sort(r_key)
    if n > 1 and (r_key_sorted[1:] == r_key_sorted[:-1]).any():
        rq_ids, rp_ids = rqid[keep].reset_index(drop=True), rpid[keep].reset_index(drop=True)
        raise _duplicate_error("run", rq_ids, rp_ids, pd.DataFrame({"q": rq_ids, "p": rp_ids}).duplicated().to_numpy())

    # Join grades by (query, product) key; unjudged products get grade 0.
    j_key = jq * n_codes + j_code
    srt = np.argsort(j_key, kind="stable")
    j_key_s = j_key[srt]
    if J > 1 and (j_key_s[1:] == j_key_s[:-1]).any():
        raise _duplicate_error("qrels", jqid, jpid, pd.DataFrame({"q": jqid, "p": jpid}).duplicated().to_numpy())
    grade = np.zeros(n, dtype=np.int64)
    if J:
        pos = np.minimum(np.searchsorted(j_key_s, r_key), J - 1)
        hit = j_key_s[pos] == r_key
        grade[hit] = jgrade[srt][pos[hit]]

    return Prepared(
        query_ids=query_ids,
        q=q_sorted,
        rank=rank,
        grade=grade,
        judged_q=jq,
        judged_grade=jgrade.astype(np.int64),
        n_ret=np.bincount(q_sorted, minlength=nq).astype(np.int64),
    )
