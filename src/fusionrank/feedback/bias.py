"""Position bias as estimated or simulated: examination propensities, and trust-bias click noise per rank.

A click model with examination ``theta_k`` at rank ``k`` and click noise ``eps+_k``
(P(click | examined, relevant)) and ``eps-_k`` (P(click | examined, not relevant)) gives

    P(click at k | relevance r) = theta_k * (eps-_k + (eps+_k - eps-_k) * r) = alpha_k * r + beta_k,
    alpha_k = theta_k * (eps+_k - eps-_k),   beta_k = theta_k * eps-_k.

The affine correction (Vardasbi et al. 2020) estimates ``r`` as ``(c - beta_k) / alpha_k``;
with no noise given (``eps+ = 1``, ``eps- = 0``) that is inverse propensity weighting, ``c / theta_k``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PositionBias:
    """Per-rank bias: ``theta[k-1]`` is rank k's examination propensity; ``eps_plus``/``eps_minus`` optional (trust bias).

    ``cells`` optionally holds the same for a grid, ``theta_grid[row-1, col-1]``.
    """

    theta: np.ndarray
    eps_plus: np.ndarray | None = None
    eps_minus: np.ndarray | None = None
    theta_grid: np.ndarray | None = None
    method: str = ""

    def __post_init__(self):
        self.theta = np.asarray(self.theta, np.float64)
        for name in ("eps_plus", "eps_minus", "theta_grid"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, np.float64))

    @property
    def ranks(self) -> int:
        return len(self.theta)

    def _at(self, a: np.ndarray, rank) -> np.ndarray:
        r = np.clip(np.asarray(rank, np.int64), 1, len(a)) - 1  # ranks past the table take the last value
        return a[r]

    def alpha(self, rank) -> np.ndarray:
        """Slope of P(click) in relevance at ``rank`` (``theta`` when there is no click noise)."""
        t = self._at(self.theta, rank)
        if self.eps_plus is None:
            return t
        return t * (self._at(self.eps_plus, rank) - self._at(self.eps_minus, rank))

    def beta(self, rank) -> np.ndarray:
        """Intercept of P(click) in relevance at ``rank`` (0 when there is no click noise)."""
        if self.eps_minus is None:
            return np.zeros(np.shape(rank))
        return self._at(self.theta, rank) * self._at(self.eps_minus, rank)

    def relative(self) -> "PositionBias":
        """The same bias with ``theta`` scaled so rank 1 is 1 (what estimators without absolute click rates recover)."""
        s = self.theta[0]
        return PositionBias(self.theta / s, self.eps_plus, self.eps_minus,
                            None if self.theta_grid is None else self.theta_grid / s, self.method)

    def to_dict(self) -> dict:
        return {k: (None if v is None else (np.asarray(v).tolist() if not isinstance(v, str) else v))
                for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PositionBias":
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "PositionBias":
        return cls.from_dict(json.loads(Path(path).read_text()))
