"""EmbeddingStore: write/load, upsert, masks for missing products, atomic replace, texts; the shared ContentStore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fusionrank.errors import FusionrankError
from fusionrank.store import EmbeddingStore, file_hash, text_hash


def _vecs(n, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_write_load_roundtrip(tmp_path):
    st = EmbeddingStore(tmp_path / "store")
    v = _vecs(3)
    st.write("title.minilm", ["a", "b", "c"], ["h1", "h2", "h3"], vectors=v, meta={"encoder": "minilm", "signature": "s1"})
    assert st.features() == ["title.minilm"] and st.exists("title.minilm")
    f = EmbeddingStore(tmp_path / "store").load("title.minilm")   # a fresh store reads it from disk
    assert list(f.ids) == ["a", "b", "c"] and list(f.hashes) == ["h1", "h2", "h3"] and len(f) == 3
    assert f.vectors.dtype == np.float32 and np.array_equal(f.vectors, v) and f.texts is None
    assert f.meta == {"encoder": "minilm", "signature": "s1"}
    assert st.hashes("title.minilm") == {"a": "h1", "b": "h2", "c": "h3"}
    assert st.hashes("nothing.here") == {}
    # the file is plain Parquet with the documented columns
    t = pq.read_table(st.path("title.minilm"))
    assert t.column_names == ["product_id", "hash", "vector"] and t.schema.field("vector").type.list_size == 4


def test_empty_feature(tmp_path):
    st = EmbeddingStore(tmp_path)
    st.write("empty.x", [], [], vectors=np.zeros((0, 5), np.float32))
    f = st.load("empty.x")
    assert f.vectors.shape == (0, 5) and len(f) == 0
    m, mask = st.matrix("empty.x", ["a"])
    assert m.shape == (1, 5) and not mask.any()


def test_matrix_masks_missing_products(tmp_path):
    st = EmbeddingStore(tmp_path)
    v = _vecs(3)
    st.write("image.e", ["a", "b", "c"], ["1", "2", "3"], vectors=v)
    m, mask = st.matrix("image.e", ["c", "zz", "a", "a"])
    assert mask.tolist() == [True, False, True, True]
    assert np.array_equal(m[0], v[2]) and np.array_equal(m[2], v[0]) and np.array_equal(m[3], v[0])
    assert m.dtype == np.float32 and not m[1].any()
    # a feature nobody encoded: all-missing with the caller's dim, or a clear error without one
    z, zm = st.matrix("audio.none", ["a", "b"], dim=7)
    assert z.shape == (2, 7) and not z.any() and not zm.any()
    with pytest.raises(FusionrankError, match="not in the store"):
        st.matrix("audio.none", ["a"])
    with pytest.raises(FusionrankError, match=r"encoded features: image\.e"):
        st.load("audio.none")


def test_upsert_replaces_adds_and_keeps(tmp_path):
    st = EmbeddingStore(tmp_path)
    v = _vecs(3)
    st.upsert("f", ["a", "b", "c"], ["1", "2", "3"], vectors=v)          # creates
    w = _vecs(2, seed=9)
    st.upsert("f", ["b", "d"], ["2b", "4"], vectors=w)                   # replace b, add d
    f = st.load("f")
    assert sorted(f.ids) == ["a", "b", "c", "d"] and len(set(f.ids)) == 4
    m, mask = st.matrix("f", ["a", "b", "c", "d"])
    assert mask.all()
    assert np.array_equal(m[0], v[0]) and np.array_equal(m[1], w[0]) and np.array_equal(m[2], v[2]) and np.array_equal(m[3], w[1])
    assert st.hashes("f")["b"] == "2b"
    # keep-list: products removed from the catalogue are dropped, even with nothing new
    st.upsert("f", [], [], vectors=np.zeros((0, 4), np.float32), keep=["a", "d"])
    assert sorted(st.load("f").ids) == ["a", "d"]
    m, mask = st.matrix("f", ["a", "b", "d"])
    assert mask.tolist() == [True, False, True] and not m[1].any() and np.array_equal(m[2], w[1])


def test_upsert_dimension_change_is_an_error(tmp_path):
    st = EmbeddingStore(tmp_path)
    st.write("f", ["a"], ["1"], vectors=_vecs(1, 4))
    with pytest.raises(FusionrankError, match="dimension changed") as ei:
        st.upsert("f", ["b"], ["2"], vectors=_vecs(1, 8))
    assert str(st.path("f")) in str(ei.value)     # tells the user what to delete
    assert list(st.load("f").ids) == ["a"]        # and left the feature untouched


def test_text_features(tmp_path):
    st = EmbeddingStore(tmp_path)
    st.write("audio.whisper", ["a", "b"], ["1", "2"], texts=["red shirt", ""], meta={"modality": "audio"})
    f = st.load("audio.whisper")
    assert f.vectors is None and f.texts == ["red shirt", ""] and f.meta["modality"] == "audio"
    st.upsert("audio.whisper", ["b", "c"], ["2x", "3"], texts=["blue jeans", "green dress ✓"], keep=["b", "c"])
    assert st.text_map("audio.whisper") == {"b": "blue jeans", "c": "green dress ✓"}
    assert st.text_map("missing") == {}
    assert pq.read_table(st.path("audio.whisper")).column_names == ["product_id", "hash", "text"]


def test_write_validates_arguments(tmp_path):
    st = EmbeddingStore(tmp_path)
    with pytest.raises(FusionrankError, match="exactly one"):
        st.write("f", ["a"], ["1"])
    with pytest.raises(FusionrankError, match="exactly one"):
        st.write("f", ["a"], ["1"], vectors=_vecs(1), texts=["x"])
    with pytest.raises(FusionrankError, match=r"n = 2"):
        st.write("f", ["a", "b"], ["1", "2"], vectors=_vecs(3))
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(FusionrankError, match="invalid feature name"):
            st.path(bad)


def test_atomic_replace(tmp_path, monkeypatch):
    st = EmbeddingStore(tmp_path)
    v = _vecs(2)
    st.write("f", ["a", "b"], ["1", "2"], vectors=v)
    st.load("f")  # cached
    st.write("f", ["c"], ["3"], vectors=_vecs(1, seed=5))
    assert list(st.load("f").ids) == ["c"]                      # cache invalidated by the write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]   # no temp files left behind

    # a write that dies half-way leaves the previous table intact and readable
    import fusionrank.store as store_mod

    def dying_write(table, where, *a, **k):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.pq, "write_table", dying_write)
    with pytest.raises(OSError, match="disk full"):
        st.write("f", ["x", "y"], ["9", "9"], vectors=_vecs(2))
    monkeypatch.undo()
    fresh = EmbeddingStore(tmp_path)
    assert list(fresh.load("f").ids) == ["c"] and fresh.features() == ["f"]


def test_hashes(tmp_path):
    assert text_hash("red shirt", "sig1") == text_hash("red shirt", "sig1")
    assert text_hash("red shirt", "sig1") != text_hash("red shirt", "sig2") != text_hash("red shirts", "sig2")
    assert text_hash("bad \udc80 surrogate", "s")  # lone surrogates from odd sources do not crash hashing
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    h = file_hash(str(p), "s")
    assert h == file_hash(str(p), "s") and h != file_hash(str(p), "t")
    p.write_bytes(b"abd")
    assert file_hash(str(p), "s") != h
    assert file_hash(str(tmp_path / "missing"), "s") is None


# --- the content store shared across workspaces ------------------------------------------------
def test_content_store_vectors_and_texts(tmp_path):
    from fusionrank.store import ContentStore

    cs = ContentStore(tmp_path / "content")
    assert cs.lookup("minilm", ["h1"]) == {} and cs.missing("minilm", ["h1"]) == {"h1"} and cs.count("minilm") == 0
    assert not (tmp_path / "content").exists()             # reading creates nothing
    v = _vecs(3)
    cs.add("minilm", ["h1", "h2", "h3"], list(v))
    cs.add("whisper_tiny_en", ["a1", "a2"], ["red shirt ✓", ""])
    got = cs.lookup("minilm", ["h3", "h1", "zz", None])
    assert set(got) == {"h1", "h3"} and got["h1"].dtype == np.float32
    assert np.array_equal(got["h1"], v[0]) and np.array_equal(got["h3"], v[2])
    assert cs.lookup("whisper_tiny_en", ["a1", "a2"]) == {"a1": "red shirt ✓", "a2": ""}
    assert cs.missing("minilm", ["h2", "h9"]) == {"h9"}
    # a hash already stored keeps its first value (same hash = same content and encoder signature)
    cs.add("minilm", ["h1", "h4"], [np.ones(4, np.float32), np.full(4, 2, np.float32)])
    assert np.array_equal(cs.lookup("minilm", ["h1"])["h1"], v[0]) and cs.count("minilm") == 4
    # more hashes than one query binds
    many = [f"k{i}" for i in range(2500)]
    cs.add("big", many, list(_vecs(2500, dim=2)))
    assert len(cs.lookup("big", many)) == 2500 and cs.missing("big", many + ["x"]) == {"x"}
    with pytest.raises(FusionrankError, match="invalid encoder name"):
        cs.path("../x")


def test_content_store_write_that_fails_half_way_leaves_it_as_it_was(tmp_path):
    from fusionrank.store import ContentStore

    cs = ContentStore(tmp_path)
    cs.add("e", ["a", "b"], list(_vecs(2)))
    bad = list(_vecs(50, seed=3)) + [object()]             # the 51st value cannot become a vector
    with pytest.raises(TypeError):
        cs.add("e", [f"n{i}" for i in range(51)], bad)
    assert cs.count("e") == 2 and cs.missing("e", ["a", "b", "n0"]) == {"n0"}


def test_content_store_survives_a_process_killed_mid_write(tmp_path):
    """A hard kill inside the write transaction: the committed rows stay, the table is intact."""
    import subprocess
    import sys
    import textwrap

    from fusionrank.store import ContentStore

    ContentStore(tmp_path).add("e", ["a"], [np.ones(8, np.float32)])
    child = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from fusionrank.store import ContentStore

        class Dying(list):
            def __iter__(self):
                for i, v in enumerate(list.__iter__(self)):
                    if i == 3000:
                        os.kill(os.getpid(), signal.SIGKILL)   # mid-transaction, thousands of rows in
                    yield v

        n = 5000
        ContentStore({str(tmp_path)!r}).add("e", [f"k{{i}}" for i in range(n)], Dying(np.ones((n, 8), np.float32)))
    """)
    import os

    import fusionrank

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(fusionrank.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, env=env)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    cs = ContentStore(tmp_path)
    assert cs.count("e") == 1 and set(cs.lookup("e", ["a", "k0", "k2999"])) == {"a"}
    import sqlite3

    with sqlite3.connect(cs.path("e")) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cs.add("e", ["k0"], [np.zeros(8, np.float32)])        # and it takes writes again
    assert cs.count("e") == 2
