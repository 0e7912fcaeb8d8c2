"""Position-bias estimation from click logs: randomised swaps, intervention harvesting and regression EM.

Every estimator reads a click log (a pandas frame, one row per shown result) with the columns

``query_id``       the search (one served list)
``user_query``     the query text or id: with ``product_id``, what identifies a (query, product) pair
``product_id``     the product shown
``rank``           1-based rank it was shown at
``logged_rank``    1-based rank before a randomisation swap (``== rank`` when not randomised)
``randomised``     whether the search was randomised
``model_version``  the ranker that built the list
``grid_row``, ``grid_col``  1-based cell of ``rank`` on the page
``click``          clicks on the row (0/1 per row typically)

and returns a :class:`~fusionrank.feedback.bias.PositionBias` whose ``theta`` is normalised so that
rank 1 is 1 (:meth:`PositionBias.relative`): without absolute examination rates, only ratios are
identified. Each assumes the position-based model P(click at k) = theta_k * gamma(query, product);
under trust bias (click noise per rank) they recover theta_k (eps-_k + (eps+_k - eps-_k) r) ratios,
not theta_k alone. :data:`ESTIMATORS` maps "swaps", "harvest" and "em" to them.
"""
from __future__ import annotations

import numpy as np

from ..errors import FusionrankError, SchemaError
from ..registry import Registry
from .bias import PositionBias

#: Position-bias estimators by name: ``ESTIMATORS.get(name)(log, ranks=10) -> PositionBias``.
ESTIMATORS: Registry = Registry("propensity estimator")

LOG_COLUMNS = ("query_id", "user_query", "product_id", "rank", "logged_rank", "randomised",
               "model_version", "grid_row", "grid_col", "click")


class InsufficientInterventionsError(FusionrankError, ValueError):
    """The log holds too little variation in rank to identify some propensities.

    Attributes: ``method`` (the estimator), ``missing_ranks`` (ranks that could not be estimated)
    and ``found`` (a short description of what the log holds).
    """

    def __init__(self, method: str, message: str, missing_ranks=(), found: dict | None = None):
        self.method, self.missing_ranks, self.found = method, [int(k) for k in missing_ranks], dict(found or {})
        super().__init__(f"{method}: {message}")


def _check(log, needed: tuple[str, ...], ranks: int, method: str):
    missing = [c for c in needed if c not in log.columns]
    if missing:
        raise SchemaError("click log", missing, list(log.columns),
                          hint=f"{method} needs the columns {list(needed)}")
    if ranks < 2:
        raise ValueError(f"{method}: ranks must be at least 2; got {ranks}")
    shown = log[log["rank"] <= ranks]
    top = int(shown["rank"].max()) if len(shown) else 0
    if top < ranks:
        raise InsufficientInterventionsError(method, f"the log shows results down to rank {top}, fewer than ranks={ranks}",
                                             range(top + 1, ranks + 1), {"max_rank": top})
    return shown


# ---------------------------------------------------------------------------------------------- swaps


@ESTIMATORS.register("swaps")
def estimate_from_swaps(log, ranks: int = 10, grid: bool = False) -> PositionBias:
    """Relative propensities from a swap intervention (Joachims et al. 2017, "Unbiased learning-to-rank with biased feedback", WSDM).

    Design: for a share of traffic (chosen independently of the query) the service swaps the result
    logged at rank 1 with the one logged at rank k, k uniform in 2..n. Write ``CTR(j -> k)`` for the
    click-through rate of rows logged at rank ``j`` and shown at rank ``k``. Under the PBM
    ``CTR(j -> k) = theta_k * rbar_j``, where ``rbar_j`` is the mean relevance of what the ranker puts at
    ``j``; because randomisation is independent of the query, ``rbar_j`` is the same in randomised and
    ordinary traffic. Hence

        theta_k / theta_1 = (CTR(1 -> k) + CTR(k -> k)) / (CTR(1 -> 1) + CTR(k -> 1)),

    numerator and denominator both being ``(rbar_1 + rbar_k)`` times the propensity. This uses both
    halves of each swap (the rank-1 result moved down, and the rank-k result moved up) so the unknown
    relevances cancel exactly, with less variance than ``CTR(1 -> k) / CTR(1 -> 1)`` alone.
    ``CTR(1 -> 1)`` and ``CTR(k -> k)`` come from the lists not swapped at those ranks.

    With ``grid=True`` the result also carries ``theta_grid[row-1, col-1]``, each cell taking the
    propensity of the rank the log places there (``grid_row``, ``grid_col``); cells no rank in
    1..``ranks`` reaches are NaN.
    """
    need = ("rank", "logged_rank", "click") + (("grid_row", "grid_col") if grid else ())
    shown = _check(log, need, ranks, "swaps")
    shown = shown[shown["logged_rank"] <= ranks]
    idx = (shown["logged_rank"].to_numpy(np.int64) - 1) * ranks + shown["rank"].to_numpy(np.int64) - 1
    clicks = np.bincount(idx, weights=shown["click"].to_numpy(np.float64), minlength=ranks * ranks).reshape(ranks, ranks)
    views = np.bincount(idx, minlength=ranks * ranks).reshape(ranks, ranks)
    k = np.arange(1, ranks)
    unswapped = [int(j) + 1 for j in k if views[0, j] == 0 or views[j, 0] == 0]
    if unswapped or views[0, 0] == 0:
        raise InsufficientInterventionsError(
            "swaps", "no randomised swaps of rank 1 with rank(s) " f"{unswapped or [1]}; "
            "randomise a share of traffic by swapping rank 1 with rank k, k uniform in 2..n "
            "(`fusionrank serve --randomise-share 0.1`), or use 'harvest' once two or more model versions are logged",
            unswapped, {"randomised_rows": int(np.asarray(log.get("randomised", [])).sum())})
    with np.errstate(invalid="ignore", divide="ignore"):
        ctr = clicks / views
    diag = np.diag(ctr)
    theta = np.ones(ranks)
    theta[1:] = (ctr[0, 1:] + diag[1:]) / (ctr[0, 0] + ctr[1:, 0])
    bias = PositionBias(theta, method="swaps")
    if grid:
        bias.theta_grid = _grid_of(shown, theta, ranks)
    return bias


def _grid_of(shown, theta: np.ndarray, ranks: int) -> np.ndarray:
    cells = shown.drop_duplicates("rank")[["rank", "grid_row", "grid_col"]].to_numpy(np.int64)
    out = np.full((cells[:, 1].max(), cells[:, 2].max()), np.nan)
    for rank, row, col in cells:
        out[row - 1, col - 1] = theta[rank - 1]
    return out


# ---------------------------------------------------------------------------------------------- harvesting


def _pair_counts(shown, ranks: int):
    """Per (query, product, rank): clicks and views."""
    agg = (shown.groupby(["user_query", "product_id", "rank"], sort=False, observed=True)["click"]
           .agg(["sum", "count"]).reset_index())
    return agg


@ESTIMATORS.register("harvest")
def intervention_harvesting(log, ranks: int = 10, max_iter: int = 2000, weighting: str = "impressions") -> PositionBias:
    """Relative propensities harvested from several logged rankers (Agarwal et al. 2019, "Estimating position bias without intrusive interventions", WSDM).

    When two or more model versions serve the same query (assigned independently of the shopper),
    the same (query, product) is shown at different ranks: a natural swap. For every pair of ranks
    ``k != k'`` let ``Omega_{k,k'}`` be the (query, product) pairs shown at both, and

        c[k, k'] = sum over Omega_{k,k'} of CTR(query, product, at rank k),   N[k, k'] = |Omega_{k,k'}|,

    so that ``E c[k, k'] = theta_k * rho_{k,k'} * N[k, k']`` with ``rho_{k,k'} = rho_{k',k}`` the mean
    relevance of ``Omega_{k,k'}``. With ``weighting="impressions"`` (the default) ``c`` and ``N`` are the
    clicks and impressions of ``Omega_{k,k'}`` at rank k instead: a pair counts by its traffic, so the
    rarely searched pairs, whose click rates are mostly noise, weigh little. Their relevance mix is
    still the same at both ranks when the model versions serve the same query stream (the
    symmetric ``rho`` holds in expectation); ``weighting="pairs"`` counts every pair once. The AllPairs extremum estimator maximises the binomial likelihood
    ``sum_{k != k'} c log(theta_k rho_kk') + (N - c) log(1 - theta_k rho_kk')`` over ``theta`` and the
    symmetric ``rho`` (L-BFGS on logits, analytic gradient). Every (query, product) counts once per rank
    pair, whatever its traffic. All pairs are used, not only those with rank 1, so ranks the rankers
    never swap with rank 1 are still reached through the others. Raises
    :class:`InsufficientInterventionsError` with fewer than two model versions, or when some rank shares
    no (query, product) with the others (it names those ranks).
    """
    from scipy.optimize import minimize
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if weighting not in ("impressions", "pairs"):
        raise FusionrankError(f"harvest: weighting must be 'impressions' or 'pairs'; got {weighting!r}")
    shown = _check(log, ("user_query", "product_id", "rank", "model_version", "click"), ranks, "harvest")
    versions = sorted(map(str, shown["model_version"].unique()))
    if len(versions) < 2:
        raise InsufficientInterventionsError(
            "harvest", f"needs lists from at least two model versions that show the same (query, product) at "
                       f"different ranks; the log holds {len(versions)}: {versions}", range(2, ranks + 1),
            {"model_versions": versions})
    agg = _pair_counts(shown, ranks)
    agg["ctr"] = agg["sum"] / agg["count"]
    agg["n_ranks"] = agg.groupby(["user_query", "product_id"], sort=False, observed=True)["rank"].transform("size")
    multi = agg[agg["n_ranks"] > 1]
    pairs = multi.merge(multi[["user_query", "product_id", "rank"]], on=["user_query", "product_id"], suffixes=("", "_other"))
    pairs = pairs[pairs["rank"] != pairs["rank_other"]]
    k1 = pairs["rank"].to_numpy(np.int64) - 1
    k2 = pairs["rank_other"].to_numpy(np.int64) - 1
    by_traffic = weighting == "impressions"
    c = np.bincount(k1 * ranks + k2, weights=pairs["sum" if by_traffic else "ctr"].to_numpy(np.float64),
                    minlength=ranks * ranks).reshape(ranks, ranks)
    N = np.bincount(k1 * ranks + k2, weights=pairs["count"].to_numpy(np.float64) if by_traffic else None,
                    minlength=ranks * ranks).reshape(ranks, ranks).astype(np.float64)

    adj = coo_matrix((np.ones(len(k1)), (k1, k2)), shape=(ranks, ranks))
    _, label = connected_components(adj, directed=False)
    lonely = [k + 1 for k in range(ranks) if label[k] != label[0]]
    if lonely:
        raise InsufficientInterventionsError(
            "harvest", f"rank(s) {lonely} share no (query, product) with rank 1, directly or through other ranks; "
                       f"found {len(multi.groupby(['user_query', 'product_id']))} (query, product) pairs shown at "
                       f"two or more ranks by model versions {versions}", lonely,
            {"model_versions": versions, "overlapping_pairs": int(len(pairs) // 2)})

    iu, ju = np.nonzero(np.triu(N > 0, 1))                               # one rho per unordered pair
    P = len(iu)
    rows = np.concatenate([iu, ju])
    cols = np.concatenate([ju, iu])
    cc, nn = c[rows, cols], N[rows, cols]
    pair = np.concatenate([np.arange(P), np.arange(P)])

    def nll(x):
        a, b = x[:ranks], x[ranks:]
        t, r = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
        p = np.clip(t[rows] * r[pair], 1e-12, 1 - 1e-12)
        f = -(cc * np.log(p) + (nn - cc) * np.log1p(-p)).sum()
        dp = -cc / p + (nn - cc) / (1 - p)
        ga = np.bincount(rows, dp * p * (1 - t[rows]), minlength=ranks)
        gb = np.bincount(pair, dp * p * (1 - r[pair]), minlength=P)
        return f, np.concatenate([ga, gb])

    ctr_rank = np.array([np.nanmean(agg.loc[agg["rank"] == k + 1, "ctr"]) for k in range(ranks)])
    t0 = np.clip(ctr_rank / ctr_rank.max() * 0.9, 0.01, 0.99)
    x0 = np.concatenate([np.log(t0 / (1 - t0)), np.zeros(P)])
    res = minimize(nll, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = 1 / (1 + np.exp(-res.x[:ranks]))
    return PositionBias(theta, method="harvest").relative()


# ---------------------------------------------------------------------------------------------- EM


def _group_rank_cells(log, keys: list[str], ranks: int, method: str):
    """Click and impression counts per (group of ``keys``, rank) cell: ``(G, g, k, n, c, n_rank)``.

    ``g``/``k`` are each non-empty cell's group and 0-based rank, ``n``/``c`` its impressions and
    clicks (clicks capped at impressions), ``n_rank`` the impressions per rank.
    """
    import pandas as pd

    shown = _check(log, tuple(keys) + ("rank", "click"), ranks, method)
    group = pd.MultiIndex.from_frame(shown[keys]).factorize()[0] if len(keys) > 1 else pd.factorize(shown[keys[0]])[0]
    G = int(group.max()) + 1
    cell = group.astype(np.int64) * ranks + shown["rank"].to_numpy(np.int64) - 1
    ucell, inv = np.unique(cell, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    c = np.minimum(np.bincount(inv, weights=shown["click"].to_numpy(np.float64)), n)
    g, k = ucell // ranks, ucell % ranks
    n_rank = np.bincount(k, n, minlength=ranks)
    if (n_rank == 0).any():
        raise InsufficientInterventionsError(method, "no rows at some ranks", np.flatnonzero(n_rank == 0) + 1)
    lonely = _unreached_ranks(g, k, G, ranks)
    if lonely:
        multi = int((np.bincount(g, minlength=G) > 1).sum())
        raise InsufficientInterventionsError(
            method, f"rank(s) {lonely} share no {' / '.join(keys)} group with rank 1, directly or through other ranks "
                    f"({multi:,} of {G:,} groups are shown at more than one rank), so their propensities are not "
                    "identified; randomise a share of traffic (`fusionrank serve --randomise-share`, estimator 'swaps'), "
                    "log two or more model versions (estimator 'harvest'), or pass features=", lonely,
            {"groups": G, "groups_at_several_ranks": multi})
    return G, g, k, n, c, n_rank


def _unreached_ranks(g: np.ndarray, k: np.ndarray, G: int, ranks: int) -> list[int]:
    """1-based ranks that no chain of groups shown at several ranks links to rank 1.

    The bipartite graph has a node per rank and per group and an edge per non-empty (group, rank) cell;
    the likelihood ties theta_k to theta_1 only through groups seen at both (directly or via other ranks).
    A rank outside rank 1's component can take any propensity, its groups' relevance compensating.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adj = coo_matrix((np.ones(len(g)), (k, ranks + g)), shape=(ranks + G, ranks + G))
    _, label = connected_components(adj, directed=False)
    return [int(r) + 1 for r in range(ranks) if label[r] != label[0]]


@ESTIMATORS.register("em")
def regression_em(log, ranks: int = 10, features: list[str] | None = None, max_iter: int = 3000,
                  tol: float = 1e-6) -> PositionBias:
    """Propensities by expectation-maximisation (Wang et al. 2018, "Position bias estimation for unbiased learning to rank in personal search", WSDM).

    The PBM ``P(click) = theta_k * gamma_g`` with latent examination E and relevance R, ``C = E and R``.
    E-step, for a row at rank ``k`` of group ``g`` without a click::

        P(E=1, R=0 | C=0) = theta_k (1 - gamma_g) / (1 - theta_k gamma_g)
        P(E=0, R=1 | C=0) = (1 - theta_k) gamma_g / (1 - theta_k gamma_g)

    (a click means E = R = 1). M-step: ``theta_k`` is the expected share of rows at ``k`` that were
    examined, ``gamma_g`` the expected share of rows of ``g`` that were relevant. Rows are first
    aggregated into (group, rank) cells, so each iteration is a few vector operations.

    The "regression" of relevance on features is a lookup table here (our choice, simpler than the
    paper's gradient-boosted trees): with ``features=None`` each (``user_query``, ``product_id``) is its
    own group, which identifies ``theta`` only if pairs are shown at more than one rank (several
    rankers, per-session noise, randomisation); with ``features=[columns]`` rows sharing those columns'
    values share one ``gamma`` (e.g. a relevance grade or a bucketed ranker score), which identifies
    ``theta`` even from one deterministic ranker as long as each value appears at several ranks.
    Iterates until ``theta / theta_1`` moves less than ``tol`` or ``max_iter`` steps.

    Raises :class:`InsufficientInterventionsError` (naming the ranks) when some rank shares no group
    with rank 1, directly or through other ranks: one deterministic ranker without randomisation,
    grouped per pair, shows every pair at one rank only, and any ``theta`` fits such a log equally well
    (EM would stay at its starting point and report it as an estimate).
    """
    keys = ["user_query", "product_id"] if features is None else list(features)
    G, g, k, n, c, n_rank = _group_rank_cells(log, keys, ranks, "em")
    n_group = np.bincount(g, n, minlength=G)

    ctr_rank = np.bincount(k, c, minlength=ranks) / n_rank
    theta = np.clip(ctr_rank / max(ctr_rank.max(), 1e-12), 0.05, 0.95)
    gamma = np.full(G, 0.5)
    prev = theta / theta[0]
    for _ in range(max_iter):
        t, r = theta[k], gamma[g]
        denom = np.maximum(1.0 - t * r, 1e-12)
        miss = n - c
        examined = c + miss * t * (1.0 - r) / denom
        relevant = c + miss * (1.0 - t) * r / denom
        theta = np.clip(np.bincount(k, examined, minlength=ranks) / n_rank, 1e-6, 1.0)
        gamma = np.clip(np.bincount(g, relevant, minlength=G) / n_group, 1e-6, 1.0 - 1e-6)
        rel = theta / theta[0]
        if np.max(np.abs(rel - prev)) < tol:
            break
        prev = rel
    return PositionBias(theta, method="em").relative()


# ---------------------------------------------------------------------------------------------- trust bias


@ESTIMATORS.register("trust_em")
def trust_bias_em(log, ranks: int = 10, features: list[str] | None = None, levels: int | None = None,
                  max_iter: int = 3000, tol: float = 1e-6) -> PositionBias:
    """Trust-bias curves ``alpha_k``, ``beta_k`` on their absolute scale, by EM (Agarwal et al. 2019, "Addressing trust bias for unbiased learning-to-rank", WWW; Vardasbi et al. 2020, CIKM).

    Model: each impression of a group ``g`` (a (``user_query``, ``product_id``) pair, or a cell of
    ``features``) is relevant (latent ``R = 1``) with probability ``gamma_g``, and

        P(click | rank k, R = 1) = a_k = theta_k eps+_k,    P(click | rank k, R = 0) = b_k = theta_k eps-_k,

    so ``P(click | k, g) = b_k + (a_k - b_k) gamma_g = beta_k + alpha_k gamma_g``. EM over the aggregated
    (group, rank) click / impression counts: the E-step splits the clicks and the non-clicks of each cell
    into expected relevant and non-relevant impressions, the M-step sets ``a_k`` (``b_k``) to the click
    share of the expected relevant (non-relevant) impressions at ``k`` and ``gamma`` to the relevant share.
    Pairs shown at several ranks (two or more model versions, randomised swaps, per-session noise) tie
    the ranks together.

    What the clicks identify. The likelihood is unchanged by ``gamma -> s gamma + t`` with
    ``alpha -> alpha / s`` and ``beta -> beta - alpha t / s``: clicks fix the per-rank lines
    ``beta_k + alpha_k gamma`` but not which relevance is called 0 and which 1 (``eps+_1 = 0.98`` cannot be
    told from ``eps+_1 = 1``). This estimator fixes that with a convention: **the least relevant level
    has relevance 0 and the most relevant level relevance 1** (its clicks at rank k are all noise,
    ``beta_k``; or all signal, ``alpha_k + beta_k``). That is the truth when the catalogue holds both
    useless and perfect results for some queries (as :class:`~.clickmodels.GradeRelevance` grades 0 and
    4 are); otherwise ``alpha``/``beta`` are those of a relevance rescaled to the range seen. The affine
    labels ``(c - beta_k) / alpha_k`` then move by the same ``s r + t`` for every impression, so a ranking
    by mean label does not depend on the convention.

    Levels. With one free ``gamma`` per pair, the lowest and highest fitted ``gamma`` are the noisiest ones
    (a pair seen 500 times has ``gamma`` within about +-0.05), so anchoring to them would inflate the
    scale. ``levels=L`` (the default, 5, when ``features`` is None) makes the relevance of a pair one of
    ``L`` latent levels ``gamma_1..gamma_L`` shared by all pairs (a mixture over pairs, EM on the pair's
    level as well), and the anchors are the lowest and highest level, each pooled over many pairs.
    With ``features=[columns]`` each cell has its own ``gamma`` (``levels=None``, the default then),
    fine when cells are few and large (a grade, a bucketed ranker score).

    Returned convention: ``theta_k = a_k = alpha_k + beta_k`` (the click rate of a relevant result at
    ``k``, not examination alone), ``eps_plus = 1`` and ``eps_minus_k = b_k / a_k``, so that
    :meth:`PositionBias.alpha` and :meth:`PositionBias.beta` give ``alpha_k`` and ``beta_k`` exactly
    (absolute, not normalised to rank 1). Iterates until alpha and beta (after the convention) move less
    than ``tol`` or ``max_iter`` steps.
    """
    keys = ["user_query", "product_id"] if features is None else list(features)
    if levels is None and features is None:
        levels = 5
    if levels is not None and levels < 2:
        raise ValueError(f"trust_em: levels must be at least 2 (a relevant and a non-relevant level); got {levels}")
    G, g, k, n, c, n_rank = _group_rank_cells(log, keys, ranks, "trust_em")
    miss = n - c

    ctr = np.bincount(k, c, minlength=ranks) / n_rank
    a = np.clip(1.5 * ctr, 0.02, 0.98)
    b = np.clip(0.5 * ctr, 0.01, 0.97)
    L = levels if levels is not None else G
    gamma = np.linspace(0.1, 0.9, L) if levels is not None else np.full(G, 0.5)
    weight = np.full(L, 1.0 / L)
    lv = np.arange(L)
    prev = None
    eps = 1e-12
    for it in range(max_iter):
        if levels is None:
            resp = None
            gi = gamma[g][:, None]                                          # [C, 1]
        else:
            p = b[k][:, None] + (a[k] - b[k])[:, None] * gamma[None, :]     # [C, L]
            p = np.clip(p, 1e-9, 1 - 1e-9)
            ll_cell = c[:, None] * np.log(p) + miss[:, None] * np.log1p(-p)
            ll = np.stack([np.bincount(g, ll_cell[:, l], minlength=G) for l in lv], 1) + np.log(np.maximum(weight, eps))
            ll -= ll.max(1, keepdims=True)
            resp = np.exp(ll)
            resp /= resp.sum(1, keepdims=True)                              # [G, L] P(level | pair's clicks)
            gi = gamma[None, :]
        ak, bk = a[k][:, None], b[k][:, None]
        rel_click = c[:, None] * gi * ak / np.maximum(gi * ak + (1 - gi) * bk, eps)
        rel_miss = miss[:, None] * gi * (1 - ak) / np.maximum(gi * (1 - ak) + (1 - gi) * (1 - bk), eps)
        if resp is not None:
            w = resp[g]                                                      # [C, L]
            rel_click, rel_miss = rel_click * w, rel_miss * w
            n_w = n[:, None] * w
            gamma = np.clip(rel_click.sum(0) + rel_miss.sum(0), eps, None) / np.maximum(n_w.sum(0), eps)
            weight = resp.mean(0)
            rc, rm = rel_click.sum(1), rel_miss.sum(1)
        else:
            rc, rm = rel_click[:, 0], rel_miss[:, 0]
            gamma = np.clip(np.bincount(g, rc + rm, minlength=G) / np.bincount(g, n, minlength=G), 1e-6, 1 - 1e-6)
        rel_n = np.bincount(k, rc + rm, minlength=ranks)
        a = np.clip(np.bincount(k, rc, minlength=ranks) / np.maximum(rel_n, eps), 1e-6, 1 - 1e-6)
        b = np.clip(np.bincount(k, c - rc, minlength=ranks) / np.maximum(n_rank - rel_n, eps), 1e-6, 1 - 1e-6)
        alpha, beta = _anchor(a, b, gamma if levels is None else gamma[weight > 1e-3])
        cur = np.concatenate([alpha, beta])
        if prev is not None and np.max(np.abs(cur - prev)) < tol:
            break
        prev = cur
    top = alpha + beta
    return PositionBias(top, np.ones(ranks), beta / top, method="trust_em")


def _anchor(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``alpha``, ``beta`` with relevance rescaled so the lowest ``gamma`` is 0 and the highest 1."""
    lo, hi = float(gamma.min()), float(gamma.max())
    alpha = a - b
    return alpha * (hi - lo), b + alpha * lo
