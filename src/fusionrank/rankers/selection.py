"""A ranker trained on another set of scalar features, fed its own columns, by name, out of today's slates.

A model saved before a feature was added (``colour_match``) ranks as it did: :meth:`~fusionrank.modeldir.ModelDir.load_ranker`
wraps its ranker in :class:`SelectedFeatures`, which hands the ranker the columns it was trained on, in its
order, and answers for the rest of the ranking path as the ranker does.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..errors import FusionrankError
from ..modalities import FEATURE_COLUMN, SCALAR_FEATURES


class SelectedFeatures:
    """``ranker``, trained on the scalar features ``names`` (a subset of today's, in its column order)."""

    def __init__(self, ranker, names: Sequence[str]):
        unknown = [f for f in names if f not in FEATURE_COLUMN]
        if unknown:
            raise FusionrankError(f"the model ranks with feature(s) {', '.join(unknown)} that this version of fusionrank "
                                  f"does not compute (it computes {', '.join(SCALAR_FEATURES)})")
        if ranker.n_features_ is not None and ranker.n_features_ != len(names):
            raise FusionrankError(f"the model's ranker reads {ranker.n_features_} features but its model directory names "
                                  f"{len(names)}")
        self.ranker, self.feature_names = ranker, tuple(names)
        self.columns = np.array([FEATURE_COLUMN[f] for f in names], np.int64)

    kind = property(lambda self: self.ranker.kind)
    groups_ = property(lambda self: self.ranker.groups_)
    n_features_ = property(lambda self: len(SCALAR_FEATURES))  # what it reads from the ranking path

    def view(self, slates):
        """``slates`` with only the ranker's feature columns, in its order (the rest shared, not copied)."""
        return dataclasses.replace(slates, x=slates.x[..., self.columns])

    def predict(self, slates, tables=None, **kwargs):
        return self.ranker.predict(self.view(slates), tables, **kwargs)

    def contributions(self, slates, tables=None):
        return self.ranker.contributions(self.view(slates), tables)

    def __getattr__(self, name):  # table_dims, modality_weights, save, get_params, ...: the ranker's own
        if name == "ranker":
            raise AttributeError(name)
        return getattr(self.ranker, name)
