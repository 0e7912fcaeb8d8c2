"""The service over a split catalogue (``fusionrank serve MODEL --shards K``): it answers, explains, logs and takes
writes as the service over the one index does, and its writes survive a restart and a crash between a shard's logs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from fusionrank.feedback.logged import rebuild_slates
from fusionrank.serving.shards import SHARDS_FILE, ShardedIndex, build_shards, shards_folder

QUERIES = ["red running shoes", "nike", "blue denim jacket for men", "zebra", "leather handbag", "watch",
           "crimson shirts for gents"]


def _encoder(model_dir, config):
    from fusionrank.modeldir import ModelDir
    from fusionrank.serving.products import ProductEncoder

    md = ModelDir.open(model_dir)
    return ProductEncoder(config.title_field, md.config().encode_settings(), md.catalog_location()[1],
                          transcript_colours=config.transcript_attributes)


def sharded_service(model_dir, directory, k: int = 2, engine: str = "local", source=None):
    """A service over ``k`` shards split from the saved index in ``source`` (its own copy, its own data folder)."""
    from fusionrank.serving import SearchIndex, SearchService, load_handle

    folder = shards_folder(directory / "index", k)
    if not (folder / SHARDS_FILE).exists():
        whole = SearchIndex.load(source, log=lambda m: None)
        build_shards(whole, k, folder, log=lambda m: None)
        whole.close()
    index = ShardedIndex.open(folder, engine, log=lambda m: None)
    return SearchService(index, load_handle(model_dir), data_dir=directory / "data",
                         product_encoder=_encoder(model_dir, index.config), log=lambda m: None)


@pytest.fixture
def pair(tiny_model, tmp_path, service_factory):
    """The one-index service and a service over 2 in-process shards of the same saved index (IVF, one list probed)."""
    one = service_factory("one", {"codec": "sq8", "nlist": 4, "nprobe": 1})
    two = sharded_service(tiny_model[0], tmp_path / "two", 2, source=tmp_path / "one" / "index")
    yield one, two
    one.close()
    two.close()


def _logged(svc, search_ids):
    log = svc.events.click_log()
    log = log[log["query_id"].isin(search_ids)]
    keys = {qid: d["slate_key"].iloc[0] for qid, d in log.groupby("query_id")}
    slates = svc.events.slates(list(set(keys.values())))
    return [slates[keys[s]] for s in search_ids]


def _same_answer(a: dict, b: dict) -> None:
    assert [h["product_id"] for h in a["results"]] == [h["product_id"] for h in b["results"]]
    assert a["results"] == b["results"]  # scores, explanations, fusion weights, matched terms, grid cells
    for key in ("candidates", "candidate_sources", "understood", "model_version", "randomised", "explored"):
        assert a[key] == b[key], key


def test_a_sharded_service_answers_and_logs_as_the_one_index(pair):
    one, two = pair
    assert two.index.sharded and len(two.index.shards) == 2
    assert len(two.index) == len(one.index) and two.index.category_names == one.index.category_names
    served = {}
    for category in (None, "Footwear"):
        for q in QUERIES:
            a, b = one.search(q, 10, category), two.search(q, 10, category)
            _same_answer(a, b)
            served.setdefault("one", []).append(a["search_id"])
            served.setdefault("two", []).append(b["search_id"])
    assert any(r["contributions"] for r in a["results"])  # not vacuous: explained results
    # the same logged slates (products, scores, features, masks, query vectors, vector keys) and the same vectors
    la, lb = _logged(one, served["one"]), _logged(two, served["two"])
    for sa, sb in zip(la, lb):
        assert (sa.product_ids, sa.vector_keys, sa.logged_ranks) == (sb.product_ids, sb.vector_keys, sb.logged_ranks)
        for field in ("scores", "features", "mask", "query_vector"):
            np.testing.assert_array_equal(getattr(sa, field), getattr(sb, field))
    keys = sorted({k for s in la for k in s.vector_keys})
    va, vb = one.events.vectors(keys), two.events.vectors(keys)
    assert set(vb) == set(keys)  # the sharded service stored each served product's vectors on its first search
    for k in keys:
        for x, y in zip(va[k], vb[k]):
            np.testing.assert_array_equal(x, y)
    # training from the logs rebuilds the same inputs from either
    ids = list(range(len(la)))
    qs = [q for _ in (None, "Footwear") for q in QUERIES]
    xa, _ = rebuild_slates(la, va, ids, qs)
    xb, _ = rebuild_slates(lb, vb, ids, qs)
    np.testing.assert_array_equal(xa.x, xb.x)


def test_interleaved_and_explored_searches_over_shards(pair, tiny_model):
    """The searches that rank a page twice or show candidates from below it read the candidate-only view."""
    from fusionrank.serving import load_handle

    one, two = pair
    for svc in pair:
        svc.reseed(7)
        svc.set_interleaving([load_handle(tiny_model[0])], 1.0)
    for q in QUERIES[:4]:
        a, b = one.search(q, 10), two.search(q, 10)
        assert a["interleaved"] and b["interleaved"]
        _same_answer(a, b)
    for svc in pair:
        svc.set_interleaving([], 0.0)
        svc.explore_share, svc.explore_depth, svc.explore_count = 1.0, 30, 3
        svc.reseed(11)
    explored = 0
    for q in QUERIES:
        a, b = one.search(q, 10), two.search(q, 10)
        _same_answer(a, b)
        explored += a["explored"]
    assert explored >= 3


def test_writes_through_a_sharded_service_and_after_its_restart(pair, tiny_model, tmp_path):
    one, two = pair
    product = {"product_id": "zebra-1", "title": "zebra stripes running shoes", "category": "Footwear",
               "description": "black and white zebra stripes"}
    for svc in pair:
        svc.put_product(product)
        assert svc.index.delete(str(one.index.ids[3]))
    _same_answer(one.search("zebra stripes", 10), two.search("zebra stripes", 10))
    assert two.search("zebra stripes", 10)["results"][0]["product_id"] == "zebra-1"
    assert two.product("zebra-1")["title"] == product["title"]
    assert two.product(str(one.index.ids[3])) is None
    assert two.stats()["index_version"] == 2 and two.stats()["products"] == len(one.index)
    two.close()
    # the shards' logs hold the writes: a new service over the same folder serves them
    again = sharded_service(tiny_model[0], tmp_path / "two", 2)
    try:
        assert again.product("zebra-1")["title"] == product["title"]
        assert again.product(str(one.index.ids[3])) is None
        for q in QUERIES + ["zebra stripes"]:
            _same_answer(one.search(q, 10), again.search(q, 10))
        # a snapshot (POST /admin/snapshot) rewrites every shard with its writes and empties its logs
        d = again.index.save(again.index.directory)
        assert all((d / f"shard-{i}" / "rows.log").read_text() == "" for i in range(2))
        again.put_product({**product, "product_id": "zebra-2", "title": "zebra print scarf"})
        one.put_product({**product, "product_id": "zebra-2", "title": "zebra print scarf"})
    finally:
        again.close()
    third = sharded_service(tiny_model[0], tmp_path / "two", 2)
    try:
        assert third.product("zebra-1") and third.product("zebra-2")
        for q in ["zebra stripes", "zebra scarf", "watch"]:
            _same_answer(one.search(q, 10), third.search(q, 10))
    finally:
        third.close()


def test_a_row_logged_for_a_write_the_shard_never_took_is_dropped(tiny_model, tmp_path, service_factory):
    """kill -9 between a shard's rows.log and its index's change log (or in the middle of a rows.log line): the shard
    loads without the unacknowledged write, and the next write gets the row after the last one it holds."""
    from fusionrank.serving.shards import Shard

    one = service_factory("one", {"codec": "flat", "nlist": 4, "nprobe": 4})
    two = sharded_service(tiny_model[0], tmp_path / "two", 2, source=tmp_path / "one" / "index")
    two.put_product({"product_id": "p-a", "title": "red wool scarf", "category": "Accessories"})
    two.close()
    d = shards_folder(tmp_path / "two" / "index", 2)
    held = [i for i in range(2) if (d / f"shard-{i}" / "rows.log").read_text()]
    assert len(held) == 1
    log = d / f"shard-{held[0]}" / "rows.log"
    good = log.read_text()
    for tail in ("99999\n", "999"):  # a whole line for a write never taken; a torn line
        log.write_text(good + tail)
        messages = []
        shard = Shard.load(d / f"shard-{held[0]}", log=messages.append)
        assert any("never took" in m for m in messages)
        assert log.read_text() == good and len(shard.rows) == shard.tables.n_rows
        shard.close()
    again = sharded_service(tiny_model[0], tmp_path / "two", 2)
    again.put_product({"product_id": "p-b", "title": "blue wool scarf", "category": "Accessories"})
    one.put_product({"product_id": "p-a", "title": "red wool scarf", "category": "Accessories"})
    one.put_product({"product_id": "p-b", "title": "blue wool scarf", "category": "Accessories"})
    try:
        for q in ("wool scarf", "red scarf", "blue", "watch"):
            _same_answer(one.search(q, 10), again.search(q, 10))
    finally:
        again.close()
        one.close()


@pytest.mark.ray
def test_fusionrank_serve_with_ray_shards_keeps_an_acknowledged_write_across_kill_9(tiny_model, tmp_path):
    """The command: shards in Ray actors, a router in the serving process; a PUT acknowledged before the server is
    killed with SIGKILL is served after a restart."""
    import shutil
    import socket

    model = tmp_path / "model"
    shutil.copytree(tiny_model[0], model, ignore=shutil.ignore_patterns("service-data", "index-shards*"))

    def start():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "FUSIONRANK_ADMIN_KEY": "admin-key-for-test", "RAY_DEDUP_LOGS": "0"}
        p = subprocess.Popen([sys.executable, "-m", "fusionrank.cli", "serve", str(model), "--port", str(port), "--shards", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if p.poll() is not None:
                raise AssertionError(f"serve exited {p.returncode}: {p.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return p, url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("serve --shards did not start")

    p, url = start()
    try:
        r = httpx.get(f"{url}/search", params={"q": "red running shoes", "k": 5}, timeout=30).json()
        assert len(r["results"]) == 5
        stats = httpx.get(f"{url}/stats", timeout=30).json()
        put = httpx.put(f"{url}/products/zebra-9", json={"title": "zebra stripes trainers", "category": "Footwear"},
                        headers={"X-API-Key": "admin-key-for-test"}, timeout=60)
        assert put.status_code == 200, put.text
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the server and the Ray runtime it started
        p.wait()
    p, url = start()
    try:
        assert httpx.get(f"{url}/products/zebra-9", timeout=30).json()["title"] == "zebra stripes trainers"
        hits = httpx.get(f"{url}/search", params={"q": "zebra stripes", "k": 3}, timeout=30).json()["results"]
        assert hits[0]["product_id"] == "zebra-9"
        assert httpx.get(f"{url}/stats", timeout=30).json()["products"] == stats["products"] + 1
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_shard_index_command_splits_beside_the_index(service_factory, tmp_path):
    """`fusionrank shard-index INDEX --shards K` writes INDEX-shardsK, which `serve --shards K` opens as it is."""
    from typer.testing import CliRunner

    from fusionrank.cli import app

    one = service_factory("one")
    res = CliRunner().invoke(app, ["shard-index", str(tmp_path / "one" / "index"), "--shards", "3"])
    assert res.exit_code == 0, res.output
    folder = shards_folder(tmp_path / "one" / "index", 3)
    assert folder.name == "index-shards3" and (folder / SHARDS_FILE).exists()
    index = ShardedIndex.open(folder, "local", log=lambda m: None)
    try:
        assert len(index) == len(one.index) and len(index.shards) == 3
        sizes = [len(s.tables) for s in index.shards]  # row % 3: within one product of a third each
        assert sum(sizes) == len(one.index) and max(sizes) - min(sizes) <= 1
        assert index.product(str(one.index.ids[5])) == one.index.product(str(one.index.ids[5]))
    finally:
        index.close()
        one.close()
    bad = CliRunner().invoke(app, ["shard-index", str(tmp_path / "nowhere"), "--shards", "2"])
    assert bad.exit_code != 0 and "nowhere" in bad.output
