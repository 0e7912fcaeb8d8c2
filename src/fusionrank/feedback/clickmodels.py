"""Simulated shoppers: click models built from small parts, as in the unbiased learning-to-rank literature.

A click model turns the relevance grades of a shown list into clicks. The parts compose:

``GradeRelevance``      grade ``g`` -> relevance ``r = (2^g - 1) / (2^max - 1)`` in [0, 1] (as ERR and ULTRA do).
examination             P(examined | rank): ``PowerLawExamination`` (``(1/k)^eta``, Joachims et al. 2017),
                        ``TableExamination`` (a table per rank, :data:`ULTRA_THETA` by default) and
                        ``GridExamination`` (a product grid: row decay times a column weight).
``ClickNoise``          P(click | examined) = ``eps- + (eps+ - eps-) * r``.
``Conversion``          carts and purchases after a click, scaled by ``r`` so they are rarer than clicks.

and the click models (registered by name in :data:`CLICK_MODELS`):

``PositionBased``       PBM: P(click at k) = theta_k * (eps- + (eps+ - eps-) r).
``TrustBias``           PBM with click noise per rank (Agarwal et al. 2019, "Addressing trust bias for unbiased
                        learning-to-rank", WWW; Vardasbi et al. 2020, CIKM): P(click at k) = theta_k (eps-_k + (eps+_k - eps-_k) r).
``Cascade``             examines top-down and stops at the first click (Craswell et al. 2008).
``DBN``                 dynamic Bayesian network (Chapelle & Zhang 2009): after a click the shopper is
                        satisfied with probability ``s(g)`` and leaves; otherwise continues with probability ``gamma``.
``GridPositionBased``   PBM on a page grid (results flow left to right, then down).

Every model has ``click_probs(grades) -> [..., n]`` (the exact marginal P(click) per shown position),
``sample(grades, n_sessions, rng) -> bool [S, n]`` (vectorised in NumPy) and, where examination depends on
the rank alone, ``bias() -> PositionBias`` (the truth the estimators in :mod:`.propensity` should recover).
:func:`simulate_log` builds a click log in the shape :mod:`.propensity` reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..registry import Registry
from .bias import PositionBias
from .schema import DEFAULT_GRID_COLUMNS, grid_cell

#: Click models by name; ``CLICK_MODELS.get(name)(**kwargs)`` builds one.
CLICK_MODELS: Registry = Registry("click model")

#: Examination probabilities for ranks 1-10 used by the ULTRA toolkit's position-biased and trust-bias
#: simulations (``ultra/utils/click_models.py``, ``PositionBiasedModel.original_exam_prob``, and
#: ``example/ClickModel/pbm_0.1_1.0_4_1.0.json``, ``exam_prob``; Ai et al. 2018, "Unbiased learning to rank:
#: theory and practice", CIKM). ULTRA raises them to the power ``eta`` to vary the severity of the bias;
#: ranks past 10 take the rank-10 value there as here.
ULTRA_THETA: tuple[float, ...] = (0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _per_rank(values: np.ndarray, n: int) -> np.ndarray:
    """``values`` for ranks 1..n; ranks past the table take its last value (as :class:`PositionBias` does)."""
    values = np.asarray(values, np.float64)
    return values[np.minimum(np.arange(n), len(values) - 1)]


# ---------------------------------------------------------------------------------------------- parts


@dataclass
class GradeRelevance:
    """Grade -> relevance probability ``r = (2^g - 1) / (2^max_grade - 1)``; grades are clipped to ``[0, max_grade]``."""

    max_grade: int = 4

    def __call__(self, grades) -> np.ndarray:
        g = np.clip(np.asarray(grades, np.float64), 0, self.max_grade)
        return (np.exp2(g) - 1.0) / (2.0 ** self.max_grade - 1.0)


@dataclass
class PowerLawExamination:
    """``theta_k = (1/k)^eta`` (Joachims et al. 2017, "Unbiased learning-to-rank with biased feedback", WSDM)."""

    eta: float = 1.0

    def theta(self, n: int) -> np.ndarray:
        return (1.0 / np.arange(1, n + 1)) ** self.eta


@dataclass
class TableExamination:
    """``theta_k`` read from a table (ranks past its end take the last value); :data:`ULTRA_THETA` by default."""

    table: Sequence[float] = ULTRA_THETA

    def theta(self, n: int) -> np.ndarray:
        return _per_rank(self.table, n)


@dataclass
class GridExamination:
    """Examination of a product grid: ``theta(row, col) = (1/row)^row_eta * col_weights[col-1]``.

    A simple model of a results page laid out in ``len(col_weights)`` columns (ranks fill a row left to
    right, then the next row): attention decays with the row as a power law (the scroll depth) and, within
    a row, falls from left to right (reading order). The default (1.0, 0.9, 0.8, 0.7) matches our page's
    four columns (:data:`~fusionrank.feedback.schema.DEFAULT_GRID_COLUMNS`).
    """

    row_eta: float = 1.0
    col_weights: Sequence[float] = (1.0, 0.9, 0.8, 0.7)

    @property
    def columns(self) -> int:
        return len(self.col_weights)

    def grid(self, rows: int) -> np.ndarray:
        """``[rows, columns]`` examination probabilities."""
        row = (1.0 / np.arange(1, rows + 1)) ** self.row_eta
        return row[:, None] * np.asarray(self.col_weights, np.float64)[None, :]

    def theta(self, n: int) -> np.ndarray:
        row, col = grid_cell(np.arange(1, n + 1), self.columns)
        return self.grid(int(row.max()) if n else 0)[row - 1, col - 1]


@dataclass
class ClickNoise:
    """P(click | examined) = ``eps_minus + (eps_plus - eps_minus) * r``, with ``r`` from ``relevance``.

    The defaults (0.1, 1.0) are ULTRA's ``pbm_0.1_1.0_4_1.0`` setting: a non-relevant result examined is
    clicked one time in ten, a perfect one always.
    """

    eps_minus: float = 0.1
    eps_plus: float = 1.0
    relevance: GradeRelevance = field(default_factory=GradeRelevance)

    def __call__(self, grades) -> np.ndarray:
        return self.eps_minus + (self.eps_plus - self.eps_minus) * self.relevance(grades)


@dataclass
class Conversion:
    """Carts and purchases after a click: P(cart | click) = ``cart_given_click * r``, P(purchase | cart) = ``purchase_given_cart * r``.

    Scaling by the relevance ``r`` makes carts and purchases rarer than clicks, and rarer still on poor results.
    """

    cart_given_click: float = 0.3
    purchase_given_cart: float = 0.5
    relevance: GradeRelevance = field(default_factory=GradeRelevance)

    def probs(self, grades) -> tuple[np.ndarray, np.ndarray]:
        r = self.relevance(grades)
        return self.cart_given_click * r, self.purchase_given_cart * r


# ---------------------------------------------------------------------------------------------- models


def _as_sessions(grades, n_sessions: int | None) -> np.ndarray:
    """Grades ``[n]`` repeated for ``n_sessions`` sessions, or ``[S, n]`` as given (one row per session)."""
    g = np.asarray(grades, np.float64)
    if g.ndim == 1:
        return np.broadcast_to(g, (1 if n_sessions is None else int(n_sessions), g.shape[0]))
    if g.ndim != 2:
        raise ValueError(f"grades must be [n] or [sessions, n]; got shape {g.shape}")
    if n_sessions is not None and n_sessions != g.shape[0]:
        raise ValueError(f"n_sessions={n_sessions} but grades has {g.shape[0]} rows (one per session)")
    return g


class ClickModel:
    """Base of the click models: ``click_probs``, ``sample``, ``sample_actions`` and ``bias``."""

    name = "click_model"

    def click_probs(self, grades) -> np.ndarray:
        """Marginal P(click) per shown position, ``[..., n]`` for grades ``[..., n]`` in shown order."""
        raise NotImplementedError

    def sample(self, grades, n_sessions: int | None = None, rng=None) -> np.ndarray:
        """Clicks ``bool [S, n]``: grades ``[n]`` shown in ``n_sessions`` sessions, or ``[S, n]`` one row per session."""
        g = _as_sessions(grades, n_sessions)
        rng = _rng(rng)
        return rng.random(g.shape) < self.click_probs(g)

    def sample_actions(self, grades, n_sessions: int | None = None, rng=None,
                       conversion: Conversion | None = None) -> dict[str, np.ndarray]:
        """Clicks, carts and purchases, each ``bool [S, n]``; a cart needs a click and a purchase a cart."""
        conversion = conversion or Conversion()
        g = _as_sessions(grades, n_sessions)
        rng = _rng(rng)
        click = self.sample(g, rng=rng)
        p_cart, p_buy = conversion.probs(g)
        cart = click & (rng.random(g.shape) < p_cart)
        purchase = cart & (rng.random(g.shape) < p_buy)
        return {"click": click, "add_to_cart": cart, "purchase": purchase}

    def bias(self, ranks: int = 10) -> PositionBias:
        """The true per-rank bias for ranks 1..``ranks`` (only where examination depends on the rank alone)."""
        raise NotImplementedError(
            f"{type(self).__name__}: examination depends on the results above, not on the rank alone; "
            "there is no per-rank theta to recover")


@CLICK_MODELS.register("pbm")
class PositionBased(ClickModel):
    """Position-based model: P(click at k) = ``theta_k * noise(g)``; examination and attraction independent."""

    name = "pbm"

    def __init__(self, examination=None, noise: ClickNoise | None = None):
        self.examination = examination if examination is not None else PowerLawExamination(1.0)
        self.noise = noise if noise is not None else ClickNoise()

    def click_probs(self, grades) -> np.ndarray:
        g = np.asarray(grades, np.float64)
        return self.examination.theta(g.shape[-1]) * self.noise(g)

    def bias(self, ranks: int = 10) -> PositionBias:
        return PositionBias(self.examination.theta(ranks), method=f"true:{self.name}")


@CLICK_MODELS.register("trust_bias")
class TrustBias(ClickModel):
    """Trust bias: examination ``theta_k`` and click noise per rank, P(click at k) = theta_k (eps-_k + (eps+_k - eps-_k) r).

    Shoppers trust the top results, so they click them more whether or not they are relevant. The defaults
    are the simulation of Agarwal et al. 2019 (WWW) that Vardasbi et al. 2020 (CIKM) and ULTRA's
    ``TrustBiasedModel`` reuse: ``eps+_k = 1 - (k + 1)/100`` and ``eps-_k = 0.65 / k`` (both decrease with
    the rank), with :data:`ULTRA_THETA` examination. ``eps_plus``/``eps_minus`` given as sequences are per rank
    (ranks past the end take the last value).
    """

    name = "trust_bias"

    def __init__(self, examination=None, eps_plus: Sequence[float] | None = None,
                 eps_minus: Sequence[float] | None = None, relevance: GradeRelevance | None = None,
                 ranks: int = 10):
        self.examination = examination if examination is not None else TableExamination()
        k = np.arange(1, ranks + 1)
        self.eps_plus = np.asarray(1.0 - (k + 1) / 100.0 if eps_plus is None else eps_plus, np.float64)
        self.eps_minus = np.asarray(0.65 / k if eps_minus is None else eps_minus, np.float64)
        self.relevance = relevance if relevance is not None else GradeRelevance()

    def click_probs(self, grades) -> np.ndarray:
        g = np.asarray(grades, np.float64)
        n = g.shape[-1]
        ep, em = _per_rank(self.eps_plus, n), _per_rank(self.eps_minus, n)
        return self.examination.theta(n) * (em + (ep - em) * self.relevance(g))

    def bias(self, ranks: int = 10) -> PositionBias:
        return PositionBias(self.examination.theta(ranks), _per_rank(self.eps_plus, ranks),
                            _per_rank(self.eps_minus, ranks), method=f"true:{self.name}")


@CLICK_MODELS.register("dbn")
class DBN(ClickModel):
    """Dynamic Bayesian network click model (Chapelle & Zhang 2009, "A dynamic Bayesian network click model for web search ranking", WWW).

    The shopper examines rank 1; at an examined rank she clicks with the attraction ``a = noise(g)``;
    after a click she is satisfied with probability ``s = satisfaction(g)`` and leaves; otherwise (no
    click, or an unsatisfied click) she examines the next rank with probability ``gamma``. Hence
    ``P(E_{k+1}) = P(E_k) * gamma * (1 - a_k s_k)`` and ``P(C_k) = P(E_k) a_k`` exactly.
    ``satisfaction`` is a callable on grades (default :class:`GradeRelevance`) or a table per grade.
    """

    name = "dbn"

    def __init__(self, noise: ClickNoise | None = None, satisfaction=None, gamma: float = 0.9):
        self.noise = noise if noise is not None else ClickNoise()
        self.satisfaction = satisfaction if satisfaction is not None else GradeRelevance()
        self.gamma = float(gamma)

    def _satisfaction(self, g: np.ndarray) -> np.ndarray:
        if callable(self.satisfaction):
            return np.asarray(self.satisfaction(g), np.float64)
        table = np.asarray(self.satisfaction, np.float64)
        return table[np.clip(g.astype(np.int64), 0, len(table) - 1)]

    def examination_probs(self, grades) -> np.ndarray:
        """P(examined) per shown position, ``[..., n]``."""
        g = np.asarray(grades, np.float64)
        a, s = self.noise(g), self._satisfaction(g)
        step = self.gamma * (1.0 - a * s)                       # P(go on to k+1 | examined k)
        e = np.ones_like(g)
        e[..., 1:] = np.cumprod(step[..., :-1], axis=-1)
        return e

    def click_probs(self, grades) -> np.ndarray:
        g = np.asarray(grades, np.float64)
        return self.examination_probs(g) * self.noise(g)

    def sample(self, grades, n_sessions: int | None = None, rng=None) -> np.ndarray:
        g = _as_sessions(grades, n_sessions)
        rng = _rng(rng)
        a, s = self.noise(g), self._satisfaction(g)
        u = rng.random((3,) + g.shape)                           # attraction, satisfaction, continuation
        clicks = np.zeros(g.shape, bool)
        examining = np.ones(g.shape[0], bool)
        for k in range(g.shape[1]):                              # n steps, each vectorised over sessions
            c = examining & (u[0, :, k] < a[:, k])
            clicks[:, k] = c
            satisfied = c & (u[1, :, k] < s[:, k])
            examining = examining & ~satisfied & (u[2, :, k] < self.gamma)
        return clicks


@CLICK_MODELS.register("cascade")
class Cascade(DBN):
    """Cascade model (Craswell et al. 2008): examine top-down, click with ``noise(g)``, stop at the first click.

    The DBN with ``gamma = 1`` and every click satisfying: P(C_k) = a_k * prod_{j<k} (1 - a_j).
    """

    name = "cascade"

    def __init__(self, noise: ClickNoise | None = None):
        super().__init__(noise, satisfaction=lambda g: np.ones_like(g), gamma=1.0)


@CLICK_MODELS.register("grid_pbm")
class GridPositionBased(PositionBased):
    """PBM on a product grid: the result at rank k sits at cell ``grid_cell(k, columns)`` and is examined with ``theta(row, col)``."""

    name = "grid_pbm"

    def __init__(self, examination: GridExamination | None = None, noise: ClickNoise | None = None,
                 columns: int | None = None):
        examination = examination if examination is not None else GridExamination()
        if columns is not None and columns != examination.columns:
            raise ValueError(f"columns={columns} but the grid examination has {examination.columns} column weights")
        super().__init__(examination, noise)

    @property
    def columns(self) -> int:
        return self.examination.columns

    def bias(self, ranks: int = 10) -> PositionBias:
        rows = -(-ranks // self.columns)
        return PositionBias(self.examination.theta(ranks), theta_grid=self.examination.grid(rows),
                            method=f"true:{self.name}")


# ---------------------------------------------------------------------------------------------- logs


def simulate_log(model: ClickModel, n_sessions: int, *, n_queries: int = 500, n_candidates: int = 20,
                 ranks: int = 10, versions: Sequence[str] = ("v1",), ranker_noise: float = 1.0,
                 session_noise: float = 0.0, swap_share: float = 0.0, columns: int = DEFAULT_GRID_COLUMNS,
                 grade_probs: Sequence[float] = (0.5, 0.2, 0.15, 0.1, 0.05), conversion: Conversion | None = None,
                 rng=None):
    """A click log of ``n_sessions`` searches in the columns :mod:`.propensity` reads (one row per shown result).

    ``n_queries`` queries have ``n_candidates`` products each, with grades drawn from ``grade_probs``.
    Each model version ranks a query's candidates by ``grade + ranker_noise * N(0, 1)`` (noise fixed per
    query, product and version: a deterministic ranker) plus ``session_noise * N(0, 1)`` drawn per session;
    a session picks a query and a version uniformly and is shown the top ``ranks``. A share ``swap_share``
    of sessions is randomised: the result at rank 1 swaps with the one at rank k, k uniform in 2..ranks
    (Joachims et al. 2017). Columns: ``query_id`` (the session), ``user_query``, ``product_id``, ``rank``,
    ``logged_rank``, ``randomised``, ``model_version``, ``grid_row``, ``grid_col``, ``click``,
    ``add_to_cart``, ``purchase`` and ``grade`` (the truth, for checks).
    """
    import pandas as pd

    rng = _rng(rng)
    if n_candidates < ranks:
        raise ValueError(f"n_candidates={n_candidates} must be at least ranks={ranks}")
    S, V = int(n_sessions), len(versions)
    grades = rng.choice(len(grade_probs), size=(n_queries, n_candidates), p=np.asarray(grade_probs) / np.sum(grade_probs))
    version_noise = rng.standard_normal((V, n_queries, n_candidates)) * ranker_noise

    q = rng.integers(n_queries, size=S)
    v = rng.integers(V, size=S)
    scores = grades[q] + version_noise[v, q]
    if session_noise:
        scores = scores + session_noise * rng.standard_normal(scores.shape)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :ranks]         # candidate index by logged rank
    logged = np.broadcast_to(np.arange(1, ranks + 1), (S, ranks)).copy()

    randomised = rng.random(S) < swap_share
    k = rng.integers(2, ranks + 1, size=S)                               # swap partner (1-based)
    rows = np.flatnonzero(randomised)
    shown = top.copy()
    shown_logged = logged.copy()
    shown[rows, 0], shown[rows, k[rows] - 1] = top[rows, k[rows] - 1], top[rows, 0]
    shown_logged[rows, 0], shown_logged[rows, k[rows] - 1] = k[rows], 1

    g_shown = grades[q[:, None], shown]
    acts = model.sample_actions(g_shown, rng=rng, conversion=conversion)
    rank = np.broadcast_to(np.arange(1, ranks + 1), (S, ranks))
    row, col = grid_cell(rank, columns)
    return pd.DataFrame({
        "query_id": np.repeat(np.arange(S), ranks),
        "user_query": np.repeat(q, ranks),
        "product_id": (q[:, None] * n_candidates + shown).ravel(),
        "rank": rank.ravel(),
        "logged_rank": shown_logged.ravel(),
        "randomised": np.repeat(randomised, ranks),
        "model_version": np.asarray(versions, dtype=object)[np.repeat(v, ranks)],
        "grid_row": row.ravel(),
        "grid_col": col.ravel(),
        "click": acts["click"].ravel().astype(np.int64),
        "add_to_cart": acts["add_to_cart"].ravel().astype(np.int64),
        "purchase": acts["purchase"].ravel().astype(np.int64),
        "grade": g_shown.ravel().astype(np.int64),
    })
