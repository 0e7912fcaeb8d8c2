"""Learning-to-rank files (LETOR / SVMlight and LightGBM formats) as padded slates.

Two text formats are read, both parsed by :func:`sklearn.datasets.load_svmlight_file`:

* **SVMlight / LibSVM ranking** (LETOR 3.0/4.0, MQ2007/MQ2008, MSLR-WEB, Yahoo! LTR)::

      <grade> qid:<query id> <index>:<value> <index>:<value> ... [# comment]

  Feature indices are 1-based by default (``zero_based=False``), as in LETOR.
* **LightGBM**: ``<grade> <index>:<value> ...`` with no ``qid``, plus a separate query
  file (default ``<data file>.query``) with one group size per line, in the order of the
  data lines (LightGBM's ``rank.train`` / ``rank.train.query``). Indices are 0-based by
  default (``zero_based=True``), as LightGBM reads them.

``fmt="auto"`` picks SVMlight when the first data line has a ``qid:`` token, and
LightGBM when it has none and the query file exists. Blank lines and ``#`` comments
are skipped (as sklearn does).

The result (:class:`LetorData`) holds one query per slate, padded to the longest slate
of the file, in the layout every ranker of :mod:`fusionrank.rankers` takes
(:class:`fusionrank.features.Slates`):

* ``x``    float32 ``[B, N, F]``, 0 on padding;
* ``rows`` int64 ``[B, N]``: index of the document among the file's data lines
  (0-based), ``-1`` on padding;
* ``mask`` bool ``[B, N, 1]``: all True (one feature group, :meth:`LetorData.feature_groups`);
* ``q``    float32 ``[B, 1]`` zeros (no query embedding);
* ``y``    float32 ``[B, N]``: grades, ``-1`` on padding;

plus ``qrels`` (``query_id, product_id, grade``, every judged document) for
:func:`fusionrank.metrics.evaluate`, and :meth:`LetorData.run` to turn a ``[B, N]``
score matrix into the matching run. Product ids are the zero-padded row numbers, so
their string order is file order.

Every problem (unparsable token, missing ``qid``, unsorted or out-of-range feature
index, non-finite value, a grade that is not a non-negative integer, query sizes that
do not add up) raises :class:`LetorFormatError` naming the file and the 1-based line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import FusionrankError
from ..ranking.features import Slates
from ..schema import GRADE, PRODUCT_ID, QUERY_ID, SCORE

FORMATS = ("auto", "svmlight", "lightgbm")

__all__ = ["FORMATS", "LetorData", "LetorFormatError", "load_letor", "load_letor_files"]


class LetorFormatError(FusionrankError, ValueError):
    """A learning-to-rank file is malformed.

    Attributes: ``file``, ``line`` (1-based line number in ``file``, or None when the
    problem is the whole file) and ``reason``.
    """

    def __init__(self, file: str | Path, line: int | None, reason: str):
        self.file, self.line, self.reason = str(file), line, reason
        where = self.file + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {reason}")


@dataclass
class LetorData:
    """Padded slates of one LETOR file, with qrels. See the module docstring for the layout."""

    slates: Slates
    qrels: pd.DataFrame
    product_ids: np.ndarray  # object [B, N]: product id of each slot, None on padding
    path: str
    format: str

    def __len__(self) -> int:
        return len(self.slates)

    @property
    def n_features(self) -> int:
        return int(self.slates.x.shape[-1])

    @property
    def n_docs(self) -> int:
        return int((self.slates.rows >= 0).sum())

    @property
    def max_grade(self) -> int:
        return int(self.qrels[GRADE].max()) if len(self.qrels) else 0

    def feature_groups(self, name: str = "letor") -> list:
        """The single :class:`~fusionrank.rankers.FeatureGroup` (every column, mask column 0, no table)."""
        from ..rankers.base import FeatureGroup

        return [FeatureGroup(name, list(range(self.n_features)), 0, None)]

    def subset(self, idx: Sequence[int] | np.ndarray) -> "LetorData":
        """The queries at positions ``idx`` (slates keep the file's padded width)."""
        idx = np.asarray(idx, dtype=np.int64)
        s = self.slates.subset(idx)
        keep = set(s.query_ids)
        qrels = self.qrels[self.qrels[QUERY_ID].isin(keep)].reset_index(drop=True)
        return LetorData(s, qrels, self.product_ids[idx], self.path, self.format)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X [n, F], y [n], group_sizes [B])`` in slate order, as LightGBM's rankers take them."""
        valid = self.slates.rows >= 0
        return self.slates.x[valid], self.slates.y[valid], valid.sum(1)

    def run(self, scores: np.ndarray) -> pd.DataFrame:
        """A run (``query_id, product_id, score``) from ``[B, N]`` scores; padding is dropped."""
        scores = np.asarray(scores)
        if scores.shape != self.slates.rows.shape:
            raise ValueError(f"scores must have shape {self.slates.rows.shape}, got {scores.shape}")
        valid = self.slates.rows >= 0
        qids = np.repeat(np.asarray(self.slates.query_ids, dtype=object), valid.sum(1))
        return pd.DataFrame({QUERY_ID: qids, PRODUCT_ID: self.product_ids[valid], SCORE: scores[valid].astype(np.float64)})


# ---------------------------------------------------------------------------------------------
# locating problems: sklearn's parser says what is wrong but not where


def _data_lines(path: Path) -> list[int]:
    """1-based line numbers of the data lines (what remains after cutting ``#...`` is not blank)."""
    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if raw.split(b"#", 1)[0].split():
                out.append(i)
    return out


def _line_problem(tokens: list[bytes], fmt: str, zero_based: bool, n_features: int | None) -> str | None:
    """What is wrong with one data line (its tokens, comment removed), or None."""

    def show(t: bytes) -> str:
        return t.decode("utf-8", "replace")

    try:
        label = float(tokens[0])
    except ValueError:
        return f"label {show(tokens[0])!r} is not a number"
    if not math.isfinite(label) or label < 0 or label != int(label):
        return f"label {show(tokens[0])!r} is not a non-negative integer grade"
    rest = tokens[1:]
    if rest and rest[0].startswith(b"qid:"):
        try:
            int(rest[0][4:])
        except ValueError:
            return f"query id {show(rest[0])!r} is not an integer (expected qid:<integer>)"
        rest = rest[1:]
    elif fmt == "svmlight":
        return "no 'qid:<id>' after the label (SVMlight ranking lines are '<grade> qid:<id> <index>:<value> ...')"
    prev, lo = None, 0 if zero_based else 1
    for t in rest:
        if t.startswith(b"qid:"):
            return f"'{show(t)}' must come right after the label"
        if b":" not in t:
            return f"feature {show(t)!r} is not <index>:<value>"
        i_s, v_s = t.split(b":", 1)
        try:
            i = int(i_s)
        except ValueError:
            return f"feature index {show(i_s)!r} in {show(t)!r} is not an integer"
        try:
            v = float(v_s)
        except ValueError:
            return f"feature value {show(v_s)!r} in {show(t)!r} is not a number"
        if i < lo:
            hint = " (this file is read with 1-based indices; pass zero_based=True for 0-based ones)" if i == 0 else ""
            return f"feature index {i} is below {lo}{hint}"
        if n_features is not None and i - lo >= n_features:
            return f"feature index {i} is beyond the expected {n_features} features"
        if prev is not None and i <= prev:
            return f"feature indices must be increasing and unique: {i} after {prev}"
        if not math.isfinite(v):
            return f"feature {i} has a non-finite value {show(v_s)!r}"
        prev = i
    return None


def _find_bad_line(path: Path, fmt: str, zero_based: bool, n_features: int | None) -> tuple[int, str] | None:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            tokens = raw.split(b"#", 1)[0].split()
            if tokens:
                problem = _line_problem(tokens, fmt, zero_based, n_features)
                if problem:
                    return n, problem
    return None


def _fail(path: Path, fmt: str, zero_based: bool, n_features: int | None, fallback: str, row: int | None = None):
    """Raise a LetorFormatError at the first bad line (or at data row ``row``, or for the whole file)."""
    bad = _find_bad_line(path, fmt, zero_based, n_features)
    if bad is not None:
        raise LetorFormatError(path, bad[0], bad[1])
    line = None
    if row is not None:
        lines = _data_lines(path)
        line = lines[row] if row < len(lines) else None
    raise LetorFormatError(path, line, fallback)


# ---------------------------------------------------------------------------------------------
# reading


def _first_data_line(path: Path) -> list[bytes] | None:
    with open(path, "rb") as f:
        for raw in f:
            tokens = raw.split(b"#", 1)[0].split()
            if tokens:
                return tokens
    return None


def _read_query_file(qpath: Path, n_rows: int, data_path: Path) -> np.ndarray:
    if not qpath.is_file():
        raise LetorFormatError(qpath, None, f"query file not found (LightGBM-format data {data_path} needs one group size per line)")
    sizes = []
    with open(qpath, "rb") as f:
        for n, raw in enumerate(f, 1):
            t = raw.strip()
            if not t:
                continue
            try:
                v = int(t)
            except ValueError:
                raise LetorFormatError(qpath, n, f"group size {t.decode('utf-8', 'replace')!r} is not an integer") from None
            if v < 1:
                raise LetorFormatError(qpath, n, f"group size must be >= 1, got {v}")
            sizes.append(v)
    total = int(np.sum(sizes)) if sizes else 0
    if total != n_rows:
        raise LetorFormatError(qpath, None, f"group sizes add up to {total} but {data_path} has {n_rows} data lines")
    return np.asarray(sizes, dtype=np.int64)


def load_letor(path: str | Path, *, fmt: str = "auto", query_file: str | Path | None = None,
               zero_based: bool | None = None, n_features: int | None = None) -> LetorData:
    """Read one LETOR/SVMlight or LightGBM ranking file into padded slates and qrels.

    ``fmt``: ``"auto"`` (default), ``"svmlight"`` or ``"lightgbm"``. ``query_file``: the
    LightGBM group-size file (default ``<path>.query``). ``zero_based``: whether feature
    indices start at 0 (default: False for SVMlight, True for LightGBM). ``n_features``:
    the feature count to use (give the training file's count when reading a test file,
    so columns line up; it is an error if the file has more). Default: the highest index
    in the file.
    """
    from sklearn.datasets import load_svmlight_file

    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown LETOR format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"LETOR file not found: {path}")
    qpath = Path(query_file) if query_file is not None else Path(str(path) + ".query")
    first = _first_data_line(path)
    if first is None:
        raise LetorFormatError(path, None, "no data lines")
    if fmt == "auto":
        if len(first) > 1 and first[1].startswith(b"qid:"):
            fmt = "svmlight"
        elif query_file is not None or qpath.is_file():
            fmt = "lightgbm"
        else:
            raise LetorFormatError(path, _data_lines(path)[0], f"no 'qid:<id>' token and no query file {qpath}: "
                                   "cannot tell which lines form a query (pass fmt= and query_file=)")
    if zero_based is None:
        zero_based = fmt == "lightgbm"
    if n_features is not None and n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")

    try:
        if fmt == "svmlight":
            X, y, qid = load_svmlight_file(str(path), query_id=True, zero_based=zero_based, n_features=n_features, dtype=np.float64)
        else:
            X, y = load_svmlight_file(str(path), zero_based=zero_based, n_features=n_features, dtype=np.float64)
    except ValueError as e:
        _fail(path, fmt, zero_based, n_features, f"cannot parse: {e}")
    n = X.shape[0]
    if fmt == "svmlight" and len(qid) != n:  # sklearn silently drops the qid of a line without one
        _fail(path, fmt, zero_based, n_features, "some lines have no 'qid:<id>'")

    # values: grades non-negative integers, features finite
    bad = ~np.isfinite(y) | (y < 0) | (y != np.round(y))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        _fail(path, fmt, zero_based, n_features, f"label {y[r]!r} is not a non-negative integer grade", row=r)
    X = X.tocsr()
    if not np.isfinite(X.data).all():
        k = int(np.flatnonzero(~np.isfinite(X.data))[0])
        r = int(np.searchsorted(X.indptr, k, side="right") - 1)
        _fail(path, fmt, zero_based, n_features, f"feature {int(X.indices[k]) + (0 if zero_based else 1)} has a non-finite value", row=r)

    # groups
    if fmt == "svmlight":
        codes, uniques = pd.factorize(pd.Series(qid), sort=False)  # first-appearance order
        query_ids = [str(u) for u in uniques]
        sizes = np.bincount(codes, minlength=len(uniques))
    else:
        sizes = _read_query_file(qpath, n, path)
        codes = np.repeat(np.arange(len(sizes)), sizes)
        query_ids = [str(i) for i in range(len(sizes))]
    order = np.argsort(codes, kind="stable")  # file rows, grouped by query
    B, N, F = len(sizes), int(sizes.max()), X.shape[1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    g = codes[order]
    pos = np.arange(n) - starts[g]

    Xd = X.toarray().astype(np.float32)
    x = np.zeros((B, N, F), np.float32)
    x[g, pos] = Xd[order]
    rows = np.full((B, N), -1, np.int64)
    rows[g, pos] = order
    yy = np.full((B, N), -1.0, np.float32)
    yy[g, pos] = y[order]
    width = len(str(max(n - 1, 0)))
    pids_flat = np.array([f"{r:0{width}d}" for r in range(n)], dtype=object)
    product_ids = np.full((B, N), None, dtype=object)
    product_ids[g, pos] = pids_flat[order]
    slates = Slates(query_ids=query_ids, queries=list(query_ids), rows=rows, x=x, mask=np.ones((B, N, 1), bool),
                    q=np.zeros((B, 1), np.float32), y=yy)
    qrels = pd.DataFrame({QUERY_ID: np.asarray(query_ids, dtype=object)[g], PRODUCT_ID: pids_flat[order],
                          GRADE: y[order].astype(np.int64)})
    return LetorData(slates, qrels, product_ids, str(path), fmt)


def load_letor_files(paths: Sequence[str | Path], *, query_files: Sequence[str | Path | None] | None = None,
                     fmt: str = "auto", zero_based: bool | None = None) -> list[LetorData]:
    """Read several files of one data set (train, test, ...) with the same feature columns.

    The feature count is the largest found in any file; files with fewer get zero
    columns, which is what a sparse file means for the indices it leaves out.
    """
    query_files = list(query_files) if query_files is not None else [None] * len(paths)
    if len(query_files) != len(paths):
        raise ValueError(f"got {len(paths)} paths but {len(query_files)} query files")
    data = [load_letor(p, fmt=fmt, query_file=qf, zero_based=zero_based) for p, qf in zip(paths, query_files)]
    F = max(d.n_features for d in data)
    for d in data:
        if d.n_features < F:
            x = d.slates.x
            d.slates.x = np.concatenate([x, np.zeros(x.shape[:2] + (F - x.shape[2],), np.float32)], -1)
    return data
