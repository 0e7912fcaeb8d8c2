"""Training labels from a click log: naive, IPS, affine and doubly robust estimates of relevance.

The click log has one row per product shown in a search (columns :data:`LOG_COLUMNS`):
``query_id`` (the search), ``user_query`` (its text), ``product_id``, ``rank`` (1-based,
as shown), ``logged_rank``, ``grid_row``/``grid_col``, ``model_version`` and the action
counts ``click``, ``add_to_cart``, ``purchase``. Each row's *signal* is a weighted sum of
its actions (:func:`action_signal`). A labeler (registered in :data:`LABELERS`) aggregates
the rows of each ``(user_query, product_id)`` pair into one label; every labeler returns a
frame with :data:`LABEL_COLUMNS`. With ``alpha_k``/``beta_k`` from
:class:`~fusionrank.feedback.bias.PositionBias` (``P(click at k | r) = alpha_k r + beta_k``)
and n impressions of the pair at ranks ``k_1..k_n`` with signals ``c_1..c_n``:

- ``naive``   ``sum_i c_i / n``                                (no correction)
- ``ips``     ``sum_i c_i / theta_{k_i} / n``                  (Joachims et al. 2017)
- ``affine``  ``sum_i (c_i - beta_{k_i}) / alpha_{k_i} / n``   (Vardasbi et al. 2020; = ips without click noise)
- ``dr``      ``r_hat + sum_i (c_i - beta_{k_i} - alpha_{k_i} r_hat) / sum_i alpha_{k_i}``, and ``r_hat`` for
  candidates never shown (Oosterhuis 2023, aggregated form; ``r_hat`` is a direct-method estimate,
  e.g. from :func:`fit_direct_method`, best given the logging policy's scores: candidates never shown
  have no clicks to correct their ``r_hat``, and a policy that shows its top k left them out for a reason).

The corrected labels are unbiased per impression but can be large or negative; train on them
with a loss that is linear in the labels (``ips_listwise``, ``ips_pairwise``).
:func:`attach_click_labels` puts labels onto training slates (like
:func:`~fusionrank.ranking.attach_grades` does for judgments), optionally mixed with grades.

Typical use::

    bias = PositionBias.load("bias.json")
    labels = click_labels(log, "ips", bias)
    train = attach_click_labels(train, labels, catalog.ids)
    NeuralRanker(loss={"name": "ips_listwise", "args": {}}).fit(train, groups, tables)

    # doubly robust: regress r_hat on the slates' features (and the logging policy's scores) from affine labels first
    s = served_ranker.predict(train, tables)
    dm = fit_direct_method(train, click_labels(log, "affine", bias), catalog.ids, logging_scores=s)
    labels = click_labels(log, "dr", bias, r_hat=dm.frame(train, catalog.ids, s))
    train = attach_click_labels(train, labels, catalog.ids, fill=dm.predict(train, s))
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import FusionrankError, SchemaError
from ..registry import Registry
from .bias import PositionBias
from .schema import DEFAULT_ACTION_WEIGHTS

#: Columns of a click log (one row per product shown in a search).
LOG_COLUMNS: tuple[str, ...] = ("query_id", "user_query", "product_id", "rank", "logged_rank", "grid_row", "grid_col",
                                "model_version", "click", "add_to_cart", "purchase")
#: Columns every labeler returns.
LABEL_COLUMNS: tuple[str, ...] = ("user_query", "product_id", "label", "impressions", "signal_sum")
#: Where an impression's propensity is looked up: by list rank or by grid cell.
POSITIONS = ("rank", "grid")
KEY = ["user_query", "product_id"]

#: name -> labeler ``fn(log, bias=None, *, weights=DEFAULT_ACTION_WEIGHTS, **args) -> DataFrame[LABEL_COLUMNS]``.
LABELERS: Registry = Registry("click labeler")


def _require(log: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise SchemaError("click log", missing, list(log.columns))


def action_signal(log: pd.DataFrame, weights: Mapping[str, float] = DEFAULT_ACTION_WEIGHTS) -> pd.Series:
    """Per row, ``sum_a weights[a] * log[a]`` over the actions in ``weights`` (float Series aligned with ``log``).

    Actions count independently: a cart or purchase without a recorded click still counts.
    """
    _require(log, list(weights))
    out = pd.Series(0.0, index=log.index)
    for action, w in weights.items():
        out += float(w) * log[action].fillna(0).astype(float)
    return out


def _lookup(table: np.ndarray, rank) -> np.ndarray:
    """``table[rank - 1]``; ranks past the table take its last value (as :class:`PositionBias` does)."""
    return table[np.clip(np.asarray(rank, np.int64), 1, len(table)) - 1]


def propensities(log: pd.DataFrame, bias: PositionBias, position: str = "rank") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row ``(theta, alpha, beta)`` of its position: by ``rank``, or by ``grid`` cell (``bias.theta_grid``).

    In grid mode the click noise (if any) is still looked up by rank.
    """
    if position not in POSITIONS:
        raise FusionrankError(f"unknown position {position!r}; valid: {', '.join(POSITIONS)}")
    _require(log, ["rank"] + (["grid_row", "grid_col"] if position == "grid" else []))
    rank = log["rank"].to_numpy()
    if position == "grid":
        if bias.theta_grid is None:
            raise FusionrankError("position='grid' needs a PositionBias with theta_grid")
        tg = bias.theta_grid
        r = np.clip(log["grid_row"].to_numpy(np.int64), 1, tg.shape[0]) - 1
        c = np.clip(log["grid_col"].to_numpy(np.int64), 1, tg.shape[1]) - 1
        theta = tg[r, c]
    else:
        theta = _lookup(bias.theta, rank)
    if bias.eps_plus is None:
        return theta, theta, np.zeros_like(theta)
    ep, em = _lookup(bias.eps_plus, rank), _lookup(bias.eps_minus, rank)
    return theta, theta * (ep - em), theta * em


def _aggregate(log: pd.DataFrame, signal: pd.Series, numerator: np.ndarray) -> pd.DataFrame:
    """Group rows by (user_query, product_id): label = mean of ``numerator``, impressions, signal_sum."""
    _require(log, KEY)
    frame = pd.DataFrame({"user_query": log["user_query"].array, "product_id": log["product_id"].array,
                          "num": np.asarray(numerator, np.float64), "signal": signal.to_numpy(np.float64)})
    g = frame.groupby(KEY, sort=False)
    out = g.agg(num=("num", "sum"), impressions=("num", "size"), signal_sum=("signal", "sum")).reset_index()
    out["label"] = out["num"] / out["impressions"]
    return out[list(LABEL_COLUMNS)]


def _need_bias(name: str, bias: PositionBias | None) -> PositionBias:
    if bias is None:
        raise FusionrankError(f"click labeler {name!r} needs a PositionBias")
    return bias


def _clipped(a: np.ndarray, clip: float | None) -> np.ndarray:
    if clip is None:
        if (a <= 0).any():
            raise FusionrankError(f"{int((a <= 0).sum())} impressions have a propensity <= 0; pass clip= to bound it")
        return a
    return np.maximum(a, clip)


@LABELERS.register("naive")
def naive(log: pd.DataFrame, bias: PositionBias | None = None, *,
          weights: Mapping[str, float] = DEFAULT_ACTION_WEIGHTS) -> pd.DataFrame:
    """Mean signal over impressions, ignoring position: ``sum_i c_i / n``."""
    signal = action_signal(log, weights)
    return _aggregate(log, signal, signal.to_numpy())


@LABELERS.register("ips")
def ips(log: pd.DataFrame, bias: PositionBias | None = None, *, weights: Mapping[str, float] = DEFAULT_ACTION_WEIGHTS,
        position: str = "rank", clip: float | None = None) -> pd.DataFrame:
    """Inverse propensity scoring: ``sum_i c_i / theta_{k_i} / n`` (click noise in ``bias`` is ignored).

    ``clip`` bounds propensities from below (``max(theta, clip)``), trading a little bias for
    variance (Joachims et al. 2017, Sec. 5).

    Joachims, Swaminathan & Schnabel, "Unbiased Learning-to-Rank with Biased Feedback", WSDM 2017.
    """
    theta, _, _ = propensities(log, _need_bias("ips", bias), position)
    signal = action_signal(log, weights)
    return _aggregate(log, signal, signal.to_numpy() / _clipped(theta, clip))


@LABELERS.register("affine")
def affine(log: pd.DataFrame, bias: PositionBias | None = None, *, weights: Mapping[str, float] = DEFAULT_ACTION_WEIGHTS,
           position: str = "rank", clip: float | None = None) -> pd.DataFrame:
    """Affine trust-bias correction: ``sum_i (c_i - beta_{k_i}) / alpha_{k_i} / n``; equals ``ips`` without click noise.

    ``beta`` is on the scale of one click; with action weights other than clicks it corrects
    the click part of the signal only approximately. ``clip`` bounds ``alpha`` from below.

    Vardasbi, Oosterhuis & de Rijke, "When Inverse Propensity Scoring does not Work: Affine
    Corrections for Unbiased Learning to Rank", CIKM 2020.
    """
    _, alpha, beta = propensities(log, _need_bias("affine", bias), position)
    signal = action_signal(log, weights)
    return _aggregate(log, signal, (signal.to_numpy() - beta) / _clipped(alpha, clip))


def _r_hat_for(log: pd.DataFrame, r_hat) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Per-row r_hat of the log, and the frame of extra (never shown) pairs when ``r_hat`` is a frame."""
    if isinstance(r_hat, str):
        _require(log, [r_hat])
        return log[r_hat].to_numpy(np.float64), None
    if isinstance(r_hat, pd.DataFrame):
        if not {"user_query", "product_id", "r_hat"} <= set(r_hat.columns):
            raise SchemaError("r_hat frame", sorted({"user_query", "product_id", "r_hat"} - set(r_hat.columns)),
                              list(r_hat.columns))
        rh = r_hat.drop_duplicates(KEY)[KEY + ["r_hat"]]
        at = pair_positions(rh, log)
        value = rh["r_hat"].to_numpy(np.float64)[at]
        missing = (at < 0) | np.isnan(value)
        if missing.any():
            first = log[KEY].iloc[int(np.flatnonzero(missing)[0])].tolist()
            raise FusionrankError(f"r_hat has no value for {int(missing.sum())} logged impressions, e.g. {first}")
        return value, rh
    a = np.asarray(r_hat, np.float64)
    if a.shape != (len(log),):
        raise FusionrankError(f"r_hat must be a column name, a frame or an array of {len(log)} values; got shape {a.shape}")
    return a, None


@LABELERS.register("dr")
def dr(log: pd.DataFrame, bias: PositionBias | None = None, *, r_hat: Any = "r_hat",
       weights: Mapping[str, float] = DEFAULT_ACTION_WEIGHTS, position: str = "rank") -> pd.DataFrame:
    """Doubly robust labels: ``r_hat + sum_i (c_i - beta_{k_i} - alpha_{k_i} r_hat) / sum_i alpha_{k_i}``.

    ``r_hat`` is the direct-method (regression) estimate of relevance: the name of a log
    column, an array aligned with the log's rows, or a frame ``user_query, product_id,
    r_hat``. A frame may hold candidates that were never shown: they get the label
    ``r_hat`` (``impressions`` 0). The estimate is unbiased if either ``r_hat`` or the
    propensities are correct. With ``r_hat = 0`` it is the ratio estimator
    ``sum_i (c_i - beta_{k_i}) / sum_i alpha_{k_i}``, which equals ``affine`` for a pair always
    shown at one rank (and differs from it in weighting otherwise).

    Oosterhuis, "Doubly Robust Estimation for Correcting Position Bias in Click Feedback for
    Unbiased Learning to Rank", ACM TOIS 2023 (here per query-product pair, aggregated over
    its impressions; the expected correction is the mean ``alpha`` over the impressions).
    """
    _, alpha, beta = propensities(log, _need_bias("dr", bias), position)
    signal = action_signal(log, weights)
    rh, frame = _r_hat_for(log, r_hat)
    rows = pd.DataFrame({"user_query": log["user_query"].array, "product_id": log["product_id"].array,
                         "r_hat": rh, "num": signal.to_numpy() - beta - alpha * rh, "alpha": alpha,
                         "signal": signal.to_numpy()})
    g = rows.groupby(KEY, sort=False)
    out = g.agg(r_hat=("r_hat", "mean"), num=("num", "sum"), alpha=("alpha", "sum"), impressions=("num", "size"),
                signal_sum=("signal", "sum")).reset_index()
    if (out["alpha"] <= 0).any():
        raise FusionrankError(f"{int((out['alpha'] <= 0).sum())} pairs have a total propensity <= 0")
    out["label"] = out["r_hat"] + out["num"] / out["alpha"]
    if frame is not None:
        unseen = frame.merge(out[KEY], on=KEY, how="left", indicator=True)
        unseen = unseen[unseen["_merge"] == "left_only"]
        extra = pd.DataFrame({"user_query": unseen["user_query"].to_numpy(), "product_id": unseen["product_id"].to_numpy(),
                              "label": unseen["r_hat"].to_numpy(np.float64), "impressions": 0, "signal_sum": 0.0})
        out = pd.concat([out[list(LABEL_COLUMNS)], extra], ignore_index=True)
    return out[list(LABEL_COLUMNS)]


def click_labels(log: pd.DataFrame, method: str = "ips", bias: PositionBias | None = None, **args: Any) -> pd.DataFrame:
    """Labels from the registered labeler ``method`` (see :data:`LABELERS`), with its keyword ``args``."""
    return LABELERS.get(method)(log, bias, **args)


# --- onto slates ---------------------------------------------------------------------------------


def slate_pairs(slates, ids) -> pd.DataFrame:
    """One row per real candidate of ``slates``: ``b, n`` (its slot), ``user_query`` (the slate's query text), ``product_id``.

    Keys are strings (as :func:`~fusionrank.ranking.attach_grades` compares product ids).
    """
    b, n = np.nonzero(slates.rows >= 0)
    ids = np.asarray(ids, dtype=object)
    return pd.DataFrame({"b": b, "n": n, "user_query": np.asarray(slates.queries, dtype=object)[b].astype(str),
                         "product_id": ids[slates.rows[b, n]].astype(str)})


def among_candidates(click_log: pd.DataFrame, slates, ids) -> np.ndarray:
    """``[rows]`` bool: which impressions of ``click_log`` are of a candidate of their query on ``slates``.

    An impression of anything else (the catalogue, its index or the candidate settings changed since
    it was served) has no features to learn from.
    """
    return pair_positions(slate_pairs(slates, ids)[KEY].drop_duplicates(), click_log) >= 0


def pair_positions(pairs: pd.DataFrame, log: pd.DataFrame) -> np.ndarray:
    """``[rows of log]``: the position in ``pairs`` (``user_query, product_id``, each pair once) of each row's pair,
    -1 where ``pairs`` lacks it. A lookup by integer codes: no merge copies the log's key columns."""
    keys = pd.MultiIndex.from_arrays([pairs[k].astype(str).array for k in KEY])
    if not keys.is_unique:
        raise FusionrankError("pair_positions needs each (user_query, product_id) pair once")
    return keys.get_indexer(pd.MultiIndex.from_arrays([log[k].astype(str).array for k in KEY]))


def _keyed(labels: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``labels[KEY + columns]`` with string keys, one row per pair."""
    out = labels[KEY + columns].astype({"user_query": str, "product_id": str})
    return out.drop_duplicates(KEY)


MIX_KEYS = ("judgments", "clicks")


def attach_click_labels(slates, labels: pd.DataFrame, ids, *, fill: float | np.ndarray = 0.0,
                        mix: Mapping[str, float] | None = None):
    """A copy of ``slates`` whose ``y`` holds click labels (-1 on padding, per the :class:`Slates` contract).

    Candidates are matched to ``labels`` by the slate's query text (``slates.queries``, as
    logged in ``user_query``) and product id (``ids[row]``). A candidate without a label
    gets ``fill``: 0 (the default, right for naive/ips/affine) or an array ``[B, N]``, e.g.
    a direct-method estimate for ``dr`` (``DirectMethod.predict(slates)``).

    ``mix={"judgments": w1, "clicks": w2}`` returns ``w1 * slates.y + w2 * clicks`` instead,
    for slates that already carry judgment grades (:func:`~fusionrank.ranking.attach_grades`);
    scale the weights so both parts have comparable ranges (grades 0..4, clicks ~0..1).
    The result is linear in the click labels, so an unbiased click part stays unbiased.
    """
    missing = [c for c in ("user_query", "product_id", "label") if c not in labels.columns]
    if missing:
        raise SchemaError("click labels", missing, list(labels.columns))
    pairs = slate_pairs(slates, ids)
    lab = _keyed(labels, ["label"])
    merged = pairs.merge(lab, on=KEY, how="left")
    fill_arr = np.broadcast_to(np.asarray(fill, np.float64), slates.rows.shape)
    values = np.where(merged["label"].isna(), fill_arr[merged["b"], merged["n"]], merged["label"].to_numpy(np.float64))
    clicks = np.full(slates.rows.shape, -1.0, np.float32)
    clicks[merged["b"].to_numpy(), merged["n"].to_numpy()] = values
    y = clicks
    if mix is not None:
        bad = sorted(set(mix) - set(MIX_KEYS))
        if bad:
            raise FusionrankError(f"unknown mix key {bad[0]!r}; valid: {', '.join(MIX_KEYS)}")
        if slates.y is None and mix.get("judgments", 0):
            raise FusionrankError("mix with judgments needs slates with grades (attach_grades first)")
        real = slates.rows >= 0
        grades = np.where(real, slates.y, 0.0) if slates.y is not None else 0.0
        y = np.where(real, mix.get("judgments", 0.0) * grades + mix.get("clicks", 0.0) * clicks, -1.0).astype(np.float32)
    return dataclasses.replace(slates, y=y)


# --- direct method -------------------------------------------------------------------------------


def relative_logging_scores(slates, logging_scores: np.ndarray) -> np.ndarray:
    """``[B, N]`` logging-policy scores minus the best score of the same query (0 for the top candidate, 0 on padding).

    A policy that shows its top k decides by how a candidate's score compares with the other
    candidates of the query, and a listwise-trained scorer is only defined up to a shift per
    query; the difference to the query's best score is comparable across queries.
    """
    s = np.asarray(logging_scores, np.float64)
    if s.shape != slates.rows.shape:
        raise FusionrankError(f"logging_scores must have the slates' shape {slates.rows.shape}; got {s.shape}")
    real = slates.rows >= 0
    if not np.isfinite(s[real]).all():
        raise FusionrankError(f"{int((~np.isfinite(s[real])).sum())} logging scores of real candidates are not finite")
    best = np.where(real, s, -np.inf).max(axis=1, keepdims=True)
    return np.where(real, s - np.where(np.isfinite(best), best, 0.0), 0.0)


@dataclasses.dataclass
class DirectMethod:
    """A regression estimate of relevance from the scalar features of a candidate (``r_hat`` for ``dr``).

    ``model`` is a fitted scikit-learn regressor over ``x[..., columns]``, followed by the
    relative logging score (:func:`relative_logging_scores`) when ``uses_logging_scores``;
    predictions are clipped to ``[lo, hi]`` (``None`` = unbounded).
    """

    model: Any
    columns: list[int]
    lo: float | None = 0.0
    hi: float | None = None
    uses_logging_scores: bool = False

    def _features(self, slates, logging_scores) -> np.ndarray:
        """``[B, N, F']`` regression inputs of every slot."""
        x = slates.x[..., self.columns].astype(np.float64)
        if not self.uses_logging_scores:
            if logging_scores is not None:
                raise FusionrankError("this direct method was fitted without logging scores; do not pass any")
            return x
        if logging_scores is None:
            raise FusionrankError("this direct method was fitted with logging scores; pass logging_scores= for these slates")
        return np.concatenate([x, relative_logging_scores(slates, logging_scores)[..., None]], axis=-1)

    def predict(self, slates, logging_scores: np.ndarray | None = None) -> np.ndarray:
        """``[B, N]`` estimates for every candidate (0 on padding); ``logging_scores [B, N]`` if fitted with them."""
        real = slates.rows >= 0
        out = np.zeros(slates.rows.shape, np.float64)
        x = self._features(slates, logging_scores)
        if real.any():
            out[real] = np.clip(self.model.predict(x[real]), self.lo, self.hi)
        return out

    def frame(self, slates, ids, logging_scores: np.ndarray | None = None) -> pd.DataFrame:
        """``user_query, product_id, r_hat`` for every candidate of ``slates`` (the ``r_hat`` argument of ``dr``)."""
        pairs = slate_pairs(slates, ids)
        pairs["r_hat"] = self.predict(slates, logging_scores)[pairs["b"], pairs["n"]]
        return pairs[KEY + ["r_hat"]].drop_duplicates(KEY)


# regressors for the direct method: name -> factory(seed) of a scikit-learn style estimator
DM_REGRESSORS: Registry = Registry("direct-method regressor")


@DM_REGRESSORS.register("ridge")
def _ridge(ridge_alpha: float = 1.0, seed: int = 0, linear_only: int = 0):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), Ridge(alpha=ridge_alpha)), "ridge__sample_weight"


def _trees(seed: int, **kw):
    """Boosted trees for a direct method: one thread, as its fit is small (the shown pairs, ~10 per query) and
    OpenMP threads that wait on a busy machine made it 14x slower in our runs."""
    from lightgbm import LGBMRegressor

    return LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=100,
                         subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
                         random_state=seed, n_jobs=1, verbose=-1, **kw)


@DM_REGRESSORS.register("lightgbm_linear")
def _lightgbm_linear(ridge_alpha: float = 1.0, seed: int = 0, linear_only: int = 0):
    """Boosted trees with a linear model in every leaf (LightGBM ``linear_tree``).

    Beyond the shown candidates a leaf continues its own slope: steep where relevance fell fast
    with the logging score among the shown (a strong logger), flat where it did not (a weak one).
    """
    return _trees(seed, linear_tree=True, linear_lambda=ridge_alpha), "sample_weight"


@DM_REGRESSORS.register("lightgbm")
def _lightgbm(ridge_alpha: float = 1.0, seed: int = 0, linear_only: int = 0):
    """Gradient-boosted trees (LightGBM, L2): relevance that is not linear in the features.

    Trees are flat outside the range they were fitted on: a candidate a strong logger never
    showed, with a logging score far below every shown one, gets the estimate of the lowest shown.
    """
    return _trees(seed), "sample_weight"


class PartiallyLinear:
    """``ridge(all columns) + trees(residual; all but the last linear_only columns)``.

    The logging score enters linearly only, so the estimate keeps falling with it below the shown
    candidates (a ridge's extrapolation), while the trees add what is not linear in the features.
    """

    def __init__(self, ridge_alpha: float, seed: int, linear_only: int):
        self.linear, self._linear_weight = _ridge(ridge_alpha)
        self.trees, self.linear_only = _trees(seed), int(linear_only)

    def _tree_x(self, X):
        return X[:, :X.shape[1] - self.linear_only] if self.linear_only else X

    def fit(self, X, y, sample_weight=None):
        self.linear.fit(X, y, **{self._linear_weight: sample_weight})
        self.trees.fit(self._tree_x(X), y - self.linear.predict(X), sample_weight=sample_weight)
        return self

    def predict(self, X):
        return self.linear.predict(X) + self.trees.predict(self._tree_x(X))


@DM_REGRESSORS.register("partially_linear")
def _partially_linear(ridge_alpha: float = 1.0, seed: int = 0, linear_only: int = 0):
    """A ridge on every input plus boosted trees on the residual, the logging score left out of the trees."""
    return PartiallyLinear(ridge_alpha, seed, linear_only), "sample_weight"


class TreesPlusSlope:
    """``g(features) + beta * s``: boosted trees on the features plus one slope in the logging score ``s``.

    ``s`` is the last input column (the relative logging score). ``g`` and ``beta >= 0`` are fitted
    on the shown candidates by backfitting, so ``beta`` is the slope of relevance in the logging
    score *beyond what the features explain* among the shown. Beyond the shown candidates only that
    slope is extrapolated, linearly; the trees stay flat.

    A logger whose score is a function of the features (BM25 over the title, itself a feature)
    adds nothing once the trees have the features: ``beta`` is about 0 and the estimate is boosted
    trees on the features, flat beyond the shown, as a weak logger's left-out candidates need. A
    strong logger's score carries a judgement the features lack: ``beta`` continues its slope, and
    what it never showed falls below what it showed (a partially linear model, Robinson 1988,
    "Root-N-consistent semiparametric regression", with the logging score in the linear part).
    """

    def __init__(self, seed: int, iterations: int = 3):
        self.seed, self.iterations = seed, iterations
        self.g = None
        self.beta = 0.0

    def fit(self, X, y, sample_weight=None):
        x, s = X[:, :-1], X[:, -1]
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        sc = s - np.average(s, weights=w)
        self.beta = 0.0
        for _ in range(self.iterations):
            self.g = _trees(self.seed).fit(x, y - self.beta * s, sample_weight=w)
            r = y - self.g.predict(x)
            self.beta = max(0.0, float(np.sum(w * sc * r) / max(np.sum(w * sc * sc), 1e-12)))
        self.g = _trees(self.seed).fit(x, y - self.beta * s, sample_weight=w)
        return self

    def predict(self, X):
        return self.g.predict(X[:, :-1]) + self.beta * X[:, -1]


@DM_REGRESSORS.register("trees_plus_slope")
def _trees_plus_slope(ridge_alpha: float = 1.0, seed: int = 0, linear_only: int = 0):
    """Boosted trees on the features plus one slope in the logging score, extrapolated below the shown candidates."""
    if not linear_only:
        raise FusionrankError("the trees_plus_slope direct method needs the logging policy's scores (logging_scores=)")
    return TreesPlusSlope(seed), "sample_weight"


def fit_direct_method(slates, labels: pd.DataFrame, ids, *, columns: list[int] | None = None, ridge_alpha: float = 1.0,
                      lo: float | None = 0.0, hi: float | None = None,
                      logging_scores: np.ndarray | None = None, regressor: str = "ridge", seed: int = 0) -> DirectMethod:
    """Fit ``r_hat`` by regressing debiased labels (e.g. ``affine``) on candidates' scalar features.

    Only candidates with impressions are used, weighted by their number of impressions
    (a label averaged over more impressions has less variance). ``columns`` picks feature
    columns of ``slates.x`` (default all). ``regressor`` names one of :data:`DM_REGRESSORS`:
    ``ridge`` (features standardised first; ``ridge_alpha``), ``lightgbm`` (boosted trees; flat
    beyond the shown candidates' logging scores), ``lightgbm_linear`` (trees with linear leaves,
    ``linear_lambda = ridge_alpha``: each continues its own slope), ``partially_linear`` (a ridge on
    everything plus trees on its residual, the logging score left out of the trees) or
    ``trees_plus_slope`` (trees on the features plus one slope in the logging score; needs it).

    ``logging_scores [B, N]``: the logging policy's score of every candidate (e.g. the served
    model's ``predict`` on ``slates``), added as one more feature relative to the query's best
    (:func:`relative_logging_scores`). The fit sees only shown candidates, which a policy chose
    by its score; its candidates never shown get their ``r_hat`` by extrapolation. Without the
    score, a strong policy's choice (made from more than the scalar features) is invisible to
    the regression, which then labels what it left out about as high as what it showed; with
    the score the regression learns how relevance falls with it. For a policy whose score is
    one of the features (e.g. BM25) it adds little. Conditioning the outcome model on the
    variable that drives selection is the usual remedy for selection on observables
    (Rosenbaum & Rubin 1983; here the logging score plays the propensity score's part).
    """
    model, weight_arg = DM_REGRESSORS.get(regressor)(ridge_alpha=ridge_alpha, seed=seed,
                                                     linear_only=int(logging_scores is not None))
    cols = list(range(slates.x.shape[-1])) if columns is None else list(columns)
    pairs = slate_pairs(slates, ids)
    lab = _keyed(labels, ["label", "impressions"])
    m = pairs.merge(lab, on=KEY, how="inner")
    m = m[m["impressions"] > 0]
    if m.empty:
        raise FusionrankError("no logged candidate on the slates: cannot fit a direct-method estimate")
    dm = DirectMethod(model, cols, lo, hi, uses_logging_scores=logging_scores is not None)
    X = dm._features(slates, logging_scores)[m["b"].to_numpy(), m["n"].to_numpy()]
    dm.model.fit(X, m["label"].to_numpy(np.float64), **{weight_arg: m["impressions"].to_numpy(np.float64)})
    return dm
