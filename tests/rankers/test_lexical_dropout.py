"""Lexical dropout: training slates whose lexical features are zeroed, as a query in unseen words looks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrank.errors import FusionrankError
from fusionrank.metrics.padded import ndcg_at_k_padded
from fusionrank.modalities import FEATURE_COLUMN, SCALAR_FEATURES
from fusionrank.ranking import Slates
from fusionrank.ranking.features import feature_groups
from fusionrank.rankers import FeatureGroup, NeuralRanker


def test_feature_groups_mark_the_lexical_columns():
    groups = {g.name: g for g in feature_groups()}
    named = {k: [SCALAR_FEATURES[c] for c in (g.lexical or [])] for k, g in groups.items()}
    assert named["text"] == ["bm25_title", "bm25_title_mm", "overlap_title"]
    assert named["audio"] == ["bm25_transcript", "bm25_transcript_mm", "overlap_transcript"]
    assert named["image"] == []
    assert FEATURE_COLUMN["cos_title"] in groups["text"].columns and FEATURE_COLUMN["cos_title"] not in groups["text"].lexical


def test_drop_lexical_zeroes_the_lexical_columns_of_random_candidates():
    r = NeuralRanker(lexical_dropout=0.5)
    r.groups_ = [FeatureGroup("text", [0, 1, 2], 0, lexical=[0, 2]), FeatureGroup("audio", [3, 4], 1, lexical=[4])]
    torch.manual_seed(0)
    xs = torch.ones(400, 10, 5)  # group columns concatenated: text 0,1,2 then audio 3,4
    out = r._drop_lexical(xs)
    assert torch.equal(out[..., 1], xs[..., 1]) and torch.equal(out[..., 3], xs[..., 3])  # dense columns untouched
    text_dropped = out[..., 0] == 0
    assert torch.equal(text_dropped, out[..., 2] == 0)  # a field's columns drop together
    assert 0.45 < text_dropped.float().mean() < 0.55
    assert not (text_dropped.all(1) | (~text_dropped).all(1)).all()  # per candidate, not per slate
    audio_dropped = out[..., 4] == 0
    assert 0.45 < audio_dropped.float().mean() < 0.55
    assert 0.45 < (audio_dropped == text_dropped).float().mean() < 0.55  # the fields drop independently
    assert torch.equal(NeuralRanker(lexical_dropout=0.0)._drop_lexical(xs), xs)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_lexical_dropout_out_of_range_is_a_clear_error(bad):
    with pytest.raises(FusionrankError, match="lexical_dropout"):
        NeuralRanker(lexical_dropout=bad)


def _slates(rng, B, N=10, worded=1.0):
    """Column 0: a lexical match (exact where the product's text uses the query's words: a share ``worded`` of
    the candidates), column 1: a dense similarity (noisy)."""
    u = rng.normal(size=(B, N))
    y = np.where(u > 1.0, 2.0, np.where(u > 0.3, 1.0, 0.0)).astype(np.float32)
    x = np.zeros((B, N, 2), np.float32)
    x[..., 0] = (y + 0.1 * rng.normal(size=(B, N))) * (rng.random((B, N)) < worded)
    x[..., 1] = u + 0.8 * rng.normal(size=(B, N))
    rows = np.arange(B * N).reshape(B, N)
    ids = [f"q{i}" for i in range(B)]
    return Slates(ids, ids, rows, x, np.ones((B, N, 1), bool), np.zeros((B, 4), np.float32), y)


def test_lexical_dropout_ranks_products_in_other_words_better():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    train, valid = _slates(rng, 300), _slates(rng, 60)
    unseen = _slates(rng, 200, worded=0.5)  # half the products say it in other words: their lexical feature is 0
    groups = [FeatureGroup("text", [0, 1], 0, lexical=[0])]

    def ndcg(dropout):
        r = NeuralRanker(fusion="concat", scorer="mlp", lexical_dropout=dropout, use_embeddings=False, epochs=15,
                         modality_dropout=0.0, seed=0).fit(train, groups, valid=valid, log=None)
        s_seen, s_unseen = r.predict(valid), r.predict(unseen)
        seen = float(np.mean(ndcg_at_k_padded(s_seen, valid.y, 10, mask=valid.rows >= 0)))
        return seen, float(np.mean(ndcg_at_k_padded(s_unseen, unseen.y, 10, mask=unseen.rows >= 0)))

    seen0, unseen0 = ndcg(0.0)
    seen1, unseen1 = ndcg(0.3)
    assert unseen1 > unseen0 + 0.02, (unseen0, unseen1)
    assert seen1 > seen0 - 0.03, (seen0, seen1)


def test_lexical_dropout_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    train = _slates(rng, 40)
    r = NeuralRanker(fusion="concat", lexical_dropout=0.25, use_embeddings=False, epochs=1, seed=0)
    r.fit(train, [FeatureGroup("text", [0, 1], 0, lexical=[0])], log=None)
    r.save(tmp_path)
    back = NeuralRanker.load(tmp_path)
    assert back.lexical_dropout == 0.25 and back.groups_[0].lexical == [0]
    np.testing.assert_allclose(back.predict(train), r.predict(train))
