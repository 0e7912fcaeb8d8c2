"""LETOR loader: SVMlight (qid:) and LightGBM (.query) files -> padded slates + qrels; clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusionrank.data import LetorFormatError, load_letor, load_letor_files
from fusionrank.errors import FusionrankError
from fusionrank.metrics import evaluate

SVMLIGHT = """\
# a LETOR-style file: comment lines, blank lines and trailing comments are skipped
2 qid:10 1:0.5 2:1.0 3:0.25 #docid = A
0 qid:10 1:0.1 3:0.75
1 qid:10 2:0.3 #docid = C

0 qid:7 1:0.9 2:0.2 3:0.1
0 qid:7 1:0.8
2 qid:3 3:1.5
0 qid:3 1:-0.5 2:0.5
1 qid:3 1:0.25 2:0.25 3:0.25
0 qid:3 2:2.0
"""

LGB_DATA = """\
1 0:0.5 2:1.0
0 1:0.25
3 0:0.1 1:0.2 2:0.3
0 2:0.9
0 0:0.7
"""
LGB_QUERY = "2\n3\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- SVMlight ---------------------------------------------------------------------------------


def test_svmlight_layout(tmp_path):
    d = load_letor(write(tmp_path / "train.txt", SVMLIGHT))
    s = d.slates
    assert d.format == "svmlight" and len(d) == 3 and d.n_docs == 9 and d.n_features == 3
    assert s.query_ids == ["10", "7", "3"]  # file order
    assert s.x.shape == (3, 4, 3) and s.x.dtype == np.float32
    assert s.mask.shape == (3, 4, 1) and s.mask.all()
    assert s.q.shape == (3, 1) and not s.q.any()
    np.testing.assert_array_equal(s.rows, [[0, 1, 2, -1], [3, 4, -1, -1], [5, 6, 7, 8]])
    np.testing.assert_array_equal(s.y, [[2, 0, 1, -1], [0, 0, -1, -1], [2, 0, 1, 0]])
    np.testing.assert_allclose(s.x[0, 0], [0.5, 1.0, 0.25], rtol=1e-6)  # 1-based indices
    np.testing.assert_allclose(s.x[0, 1], [0.1, 0.0, 0.75], rtol=1e-6)  # absent sparse entries are 0
    np.testing.assert_allclose(s.x[2, 1], [-0.5, 0.5, 0.0], rtol=1e-6)
    assert not s.x[0, 3].any() and not s.x[1, 2:].any()  # padding
    assert d.max_grade == 2


def test_svmlight_qrels_and_run(tmp_path):
    d = load_letor(write(tmp_path / "train.txt", SVMLIGHT))
    assert list(d.qrels.columns) == ["query_id", "product_id", "grade"]
    assert len(d.qrels) == 9 and d.qrels["grade"].dtype == np.int64
    assert d.qrels.iloc[0].tolist() == ["10", "0", 2]
    assert d.product_ids[0].tolist() == ["0", "1", "2", None]
    # scoring by grade is a perfect ranking: NDCG 1 where there is a relevant doc, 0 otherwise (trec)
    run = d.run(np.where(d.slates.rows >= 0, d.slates.y, -np.inf))
    assert len(run) == 9 and set(run.columns) == {"query_id", "product_id", "score"}
    res = evaluate(d.qrels, run, ["ndcg@10"])
    assert res.per_query["ndcg@10"].to_dict() == {"10": 1.0, "3": 1.0, "7": 0.0}
    with pytest.raises(ValueError, match="scores must have shape"):
        d.run(np.zeros((3, 3)))


def test_non_contiguous_query_lines_are_grouped(tmp_path):
    d = load_letor(write(tmp_path / "f.txt", "1 qid:1 1:1\n0 qid:2 1:2\n0 qid:1 1:3\n"))
    assert d.slates.query_ids == ["1", "2"]
    np.testing.assert_array_equal(d.slates.rows, [[0, 2], [1, -1]])
    np.testing.assert_array_equal(d.slates.x[0, :, 0], [1, 3])


def test_product_ids_sort_in_file_order(tmp_path):
    text = "".join(f"{i % 2} qid:{i // 4} 1:{i}\n" for i in range(12))
    d = load_letor(write(tmp_path / "f.txt", text))
    pids = d.qrels["product_id"].tolist()
    assert pids == sorted(pids) and pids[0] == "00" and pids[-1] == "11"


def test_subset_and_flat(tmp_path):
    d = load_letor(write(tmp_path / "train.txt", SVMLIGHT))
    sub = d.subset([2, 0])
    assert sub.slates.query_ids == ["3", "10"]
    assert set(sub.qrels["query_id"]) == {"3", "10"} and len(sub.qrels) == 7
    X, y, sizes = sub.flat()
    assert X.shape == (7, 3) and sizes.tolist() == [4, 3]
    np.testing.assert_array_equal(y, [2, 0, 1, 0, 2, 0, 1])
    g = d.feature_groups()
    assert len(g) == 1 and g[0].columns == [0, 1, 2] and g[0].mask_column == 0 and g[0].table is None


def test_files_share_feature_columns(tmp_path):
    train = write(tmp_path / "train.txt", SVMLIGHT)
    test = write(tmp_path / "test.txt", "1 qid:1 1:0.5\n0 qid:1 2:0.5\n")
    a, b = load_letor_files([train, test])
    assert a.n_features == b.n_features == 3
    np.testing.assert_array_equal(b.slates.x[0, 1], [0, 0.5, 0])
    assert load_letor(test, n_features=3).n_features == 3
    with pytest.raises(LetorFormatError, match=r"train.txt, line 2: feature index 3 is beyond the expected 2 features"):
        load_letor(train, n_features=2)


# --- LightGBM -----------------------------------------------------------------------------------


def test_lightgbm_format_with_default_query_file(tmp_path):
    data = write(tmp_path / "rank.train", LGB_DATA)
    write(tmp_path / "rank.train.query", LGB_QUERY)
    d = load_letor(data)
    s = d.slates
    assert d.format == "lightgbm" and s.query_ids == ["0", "1"] and d.n_features == 3
    np.testing.assert_array_equal(s.rows, [[0, 1, -1], [2, 3, 4]])
    np.testing.assert_array_equal(s.y, [[1, 0, -1], [3, 0, 0]])
    np.testing.assert_allclose(s.x[0, 0], [0.5, 0, 1.0], rtol=1e-6)  # 0-based indices
    np.testing.assert_allclose(s.x[1, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert d.max_grade == 3 and len(d.qrels) == 5


def test_lightgbm_format_with_explicit_query_file(tmp_path):
    data = write(tmp_path / "train.libsvm", LGB_DATA)
    q = write(tmp_path / "groups.txt", "1\n1\n3\n")
    d = load_letor(data, fmt="lightgbm", query_file=q)
    assert len(d) == 3 and d.slates.rows.shape == (3, 3)


def test_lightgbm_matches_sklearn_and_lightgbm_reading(tmp_path):
    from sklearn.datasets import load_svmlight_file

    data = write(tmp_path / "rank.train", LGB_DATA)
    write(tmp_path / "rank.train.query", LGB_QUERY)
    X, y, sizes = load_letor(data).flat()
    X0, y0 = load_svmlight_file(str(data), zero_based=True)
    np.testing.assert_array_equal(X, X0.toarray().astype(np.float32))
    np.testing.assert_array_equal(y, y0)
    assert sizes.tolist() == [2, 3]


@pytest.mark.parametrize("query_text,line,message", [
    ("2\n2\n", None, "group sizes add up to 4 but .*rank.train has 5 data lines"),
    ("2\nthree\n", 2, "group size 'three' is not an integer"),
    ("0\n5\n", 1, "group size must be >= 1, got 0"),
])
def test_lightgbm_bad_query_file(tmp_path, query_text, line, message):
    data = write(tmp_path / "rank.train", LGB_DATA)
    write(tmp_path / "rank.train.query", query_text)
    with pytest.raises(LetorFormatError, match=message) as e:
        load_letor(data)
    assert e.value.file.endswith("rank.train.query") and e.value.line == line
    assert str(e.value).startswith(str(tmp_path / "rank.train.query") + (f", line {line}" if line else ""))


def test_no_qid_and_no_query_file(tmp_path):
    data = write(tmp_path / "rank.train", LGB_DATA)
    with pytest.raises(LetorFormatError, match=r"rank.train, line 1: no 'qid:<id>' token and no query file .*rank.train.query"):
        load_letor(data)
    with pytest.raises(LetorFormatError, match="query file not found"):
        load_letor(data, fmt="lightgbm")


# --- malformed SVMlight lines --------------------------------------------------------------------

GOOD = "1 qid:1 1:0.5 2:0.25\n0 qid:1 1:0.1\n"


@pytest.mark.parametrize("bad,message", [
    ("0 qid:1 1:abc 2:1", r"feature value 'abc' in '1:abc' is not a number"),
    ("0 qid:1 1 2:1", r"feature '1' is not <index>:<value>"),
    ("0 1:0.5 2:1", r"no 'qid:<id>' after the label"),
    ("0 qid:1 2:0.5 1:0.3", r"feature indices must be increasing and unique: 1 after 2"),
    ("0 qid:1 1:0.5 1:0.3", r"feature indices must be increasing and unique: 1 after 1"),
    ("0 qid:1 0:0.5", r"feature index 0 is below 1 \(this file is read with 1-based indices; pass zero_based=True"),
    ("0 qid:1 1:nan", r"feature 1 has a non-finite value 'nan'"),
    ("0 qid:1 1:inf", r"feature 1 has a non-finite value 'inf'"),
    ("x qid:1 1:0.5", r"label 'x' is not a number"),
    ("1.5 qid:1 1:0.5", r"label '1.5' is not a non-negative integer grade"),
    ("-1 qid:1 1:0.5", r"label '-1' is not a non-negative integer grade"),
    ("0 qid:a 1:0.5", r"query id 'qid:a' is not an integer"),
    ("0 qid:1 x:0.5", r"feature index 'x' in 'x:0.5' is not an integer"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "bad.txt", "# header comment\n" + GOOD + "\n" + bad + "  # trailing comment\n" + GOOD)
    with pytest.raises(LetorFormatError, match=message) as e:
        load_letor(path)
    assert e.value.file == str(path) and e.value.line == 5
    assert str(e.value).startswith(f"{path}, line 5: ")
    assert isinstance(e.value, FusionrankError) and isinstance(e.value, ValueError)


def test_malformed_lightgbm_line(tmp_path):
    data = write(tmp_path / "rank.train", LGB_DATA.replace("0 1:0.25", "0 1:0.25 1:0.3"))
    write(tmp_path / "rank.train.query", LGB_QUERY)
    with pytest.raises(LetorFormatError, match=r"rank.train, line 2: feature indices must be increasing"):
        load_letor(data)


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(LetorFormatError, match=r"empty.txt: no data lines"):
        load_letor(write(tmp_path / "empty.txt", "# nothing\n\n"))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_letor(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="unknown LETOR format 'csv'; valid: auto, svmlight, lightgbm"):
        load_letor(write(tmp_path / "f.txt", GOOD), fmt="csv")


# --- with a ranker ----------------------------------------------------------------------------------


def test_neural_ranker_trains_on_letor_slates(tmp_path):
    import torch

    from fusionrank.rankers import NeuralRanker

    rng = np.random.default_rng(0)
    lines = []
    for q in range(30):
        for _ in range(8):
            f = rng.random(4)
            grade = int(f[0] > 0.6) + int(f[0] > 0.85)
            lines.append(f"{grade} qid:{q} " + " ".join(f"{j + 1}:{v:.4f}" for j, v in enumerate(f)))
    d = load_letor(write(tmp_path / "synth.txt", "\n".join(lines) + "\n"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = NeuralRanker(scorer="linear", loss={"name": "ranknet", "args": {}}, epochs=15, lr=1e-2, batch_size=8)
        r.fit(d.slates, d.feature_groups(), valid=d.slates, log=None)
        scores = r.predict(d.slates)
    finally:
        torch.set_num_threads(threads)
    assert evaluate(d.qrels, d.run(scores), ["ndcg@10"]).mean["ndcg@10"] > 0.9


# --- the real files, when shared/data lies beside the repository -------------------------------------


def _ltr_dir() -> Path | None:
    repo = Path(__file__).resolve().parents[2]
    for d in ([Path(os.environ["FUSIONRANK_SHARED_DATA"])] if os.environ.get("FUSIONRANK_SHARED_DATA") else []) + \
             [repo.parent / "shared" / "data", Path("/work/shared/data")]:
        if (d / "ltr").is_dir():
            return d / "ltr"
    return None


def test_real_files_when_available():
    root = _ltr_dir()
    if root is None or not (root / "mq2008" / "vali.txt").is_file():
        pytest.skip("shared/data/ltr not found beside the repository")
    mq = load_letor(root / "mq2008" / "vali.txt")
    assert (len(mq), mq.n_docs, mq.n_features, mq.max_grade) == (157, 2707, 46, 2)
    lgb = root / "lightgbm-lambdarank" / "rank.train"
    if lgb.is_file():
        d = load_letor(lgb)
        assert (d.format, len(d), d.n_docs, d.n_features) == ("lightgbm", 201, 3005, 301)
    assert isinstance(mq.qrels, pd.DataFrame)
