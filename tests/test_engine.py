"""Engines: the local engine's batching and the Ray Data engine's agreement with it.

The Ray tests share one local Ray runtime (module-scoped fixture, shut down at the end).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fusionrank.encode import EncodeSettings, encode_catalog
from fusionrank.encoders import LogMelStats
from fusionrank.engine import ENGINES, LocalEngine, get_engine
from fusionrank.errors import UnknownNameError
from fusionrank.ingest import ingest
from fusionrank.store import EmbeddingStore


def test_engine_registry():
    assert ENGINES.names() == ["local", "ray"]
    assert isinstance(get_engine("local"), LocalEngine)
    with pytest.raises(UnknownNameError, match="valid names: local, ray"):
        get_engine("spark")


def test_local_engine_batches_and_isolates_failures(tmp_path, make_audio, truncate):
    enc = LogMelStats()
    good = [str(make_audio(tmp_path / f"a{i}.wav", seconds=0.2 + 0.1 * i)) for i in range(4)]
    bad = str(truncate(make_audio(tmp_path / "long.ogg", seconds=1.0), tmp_path / "cut.ogg", keep=0.5))
    items = [good[0], good[1], bad, good[2], good[3]]
    got = list(LocalEngine().map(enc, items, batch_size=2, progress=False))
    assert [s for s, _ in got] == [0, 2, 4]
    assert [o.ok.tolist() for _, o in got] == [[True, True], [False, True], [True]]
    assert list(got[1][1].errors) == [0] and "cannot decode audio" in got[1][1].errors[0]
    stacked = np.concatenate([o.values for _, o in got])
    np.testing.assert_allclose(stacked, enc.encode(good), rtol=1e-6)
    assert list(LocalEngine().map(enc, [], batch_size=2, progress=False)) == []


# --- Ray --------------------------------------------------------------------------------

@pytest.fixture
def catalog_with_bad_media(tiny_catalog, tmp_path, truncate, make_audio):
    d, rows = tiny_catalog(n=5, audio=(0, 3))
    (d / "img" / "p2.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))     # corrupt photo
    truncate(make_audio(tmp_path / "long.ogg", seconds=1.0), d / "snd" / "p4.ogg", keep=0.5)
    rows[4]["audio"] = "snd/p4.ogg"                                               # truncated clip
    (d / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ingest(d, tmp_path / "cat", adapter="native", check_media=False).products


SETTINGS = dict(text_fields=("title", "description"), transcriber=None, projection=None,
                batch_size={"text": 2, "image": 2, "audio": 2, "projection": 64})


@pytest.mark.ray
def test_ray_engine_matches_local(ray_runtime, catalog_with_bad_media, tmp_path):
    products = catalog_with_bad_media
    mods = ["text", "image", "audio"]
    local = encode_catalog(products, tmp_path / "local", EncodeSettings(**SETTINGS), modalities=mods, progress=False)
    remote = encode_catalog(products, tmp_path / "ray", EncodeSettings(**SETTINGS), modalities=mods, progress=False,
                            engine="ray", engine_args={"num_cpus": 2})
    assert remote["engine"] == "ray" and ray_runtime.is_initialized()   # the engine did not stop a runtime it does not own
    strip = lambda s: [{k: v for k, v in j.items() if k not in ("seconds", "items_per_second")} for j in s["jobs"]]  # noqa: E731
    assert strip(remote) == strip(local)
    assert remote["failures"] == local["failures"] == 2
    jobs = {j["feature"]: j for j in remote["jobs"]}
    assert jobs["image.efficientnet_lite0"]["failed"] == 1 and jobs["audio.logmel_stats"]["failed"] == 1

    ls, rs = EmbeddingStore(tmp_path / "local"), EmbeddingStore(tmp_path / "ray")
    assert rs.features() == ls.features() == ["audio.logmel_stats", "description.minilm", "image.efficientnet_lite0", "title.minilm"]
    ids = products["product_id"].tolist()
    for feat in ls.features():
        a, am = ls.matrix(feat, ids)
        b, bm = rs.matrix(feat, ids)
        assert am.tolist() == bm.tolist(), feat
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=feat)
        assert rs.hashes(feat) == ls.hashes(feat)
    assert ls.matrix("image.efficientnet_lite0", ids)[1].tolist() == [True, True, False, True, True]
    assert ls.matrix("audio.logmel_stats", ids)[1].tolist() == [True, False, False, True, False]
    fails = sorted((r["feature"], r["product_id"]) for r in map(json.loads, (tmp_path / "ray" / "failures.jsonl").read_text().splitlines()))
    assert fails == [("audio.logmel_stats", "p4"), ("image.efficientnet_lite0", "p2")]

    # a second Ray run over the same store encodes nothing
    again = encode_catalog(products, tmp_path / "ray", EncodeSettings(**SETTINGS), modalities=mods, progress=False,
                           engine="ray", engine_args={"num_cpus": 2})
    assert all(j["encoded"] == 0 for j in again["jobs"])
