"""The event store on SQLite and PostgreSQL: round trips, all-or-nothing events, the click log, purge, hashing, threads, crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fusionrank.feedback.schema import Event, SearchLog, ServedSlate, slate_key
from fusionrank.feedback.store import StoreError, hash_key_for, open_store

SRC = Path(__file__).resolve().parents[2] / "src"
DAY = 86400.0
HASH_KEY = b"0123456789abcdef0123456789abcdef"


def make_slate(rng: np.random.Generator, n: int = 5, nf: int = 7, nk: int = 3, dim: int = 16, ids=None) -> ServedSlate:
    ids = ids or [f"p{i}" for i in rng.choice(1000, n, replace=False)]
    return ServedSlate(product_ids=list(ids), scores=rng.standard_normal(n).astype(np.float32),
                       features=rng.standard_normal((n, nf)).astype(np.float32), mask=rng.random((n, nk)) < 0.5,
                       query_vector=rng.standard_normal(dim).astype(np.float32),
                       vector_keys=[f"v-{p}" for p in ids], logged_ranks=list(range(1, n + 1)))


def make_search(qid: str, slate: ServedSlate, ts: float, model: str = "m1", **kw) -> SearchLog:
    return SearchLog(query_id=qid, user_query=f"query {qid}", timestamp=ts, model_version=model, slate=slate, **kw)


@pytest.fixture
def store(store_url):
    s = open_store(store_url, HASH_KEY)
    yield s
    s.close()


def test_searches_and_slates_round_trip_bit_identical(store):
    rng = np.random.default_rng(0)
    a, b = make_slate(rng), make_slate(rng, n=3)
    a.scores[0] = np.float32(np.nan)  # bit patterns survive, NaN included
    a.features[1, 2] = np.float32(-0.0)
    t = 1_700_000_000.0
    store.log_searches([make_search("q1", a, t), make_search("q2", b, t + 1), make_search("q3", a, t + 2)])
    store.log_search(make_search("q4", b, t + 3, category="shoes"))
    store.log_search(make_search("q4", a, t + 9))  # an id already stored is left as it was
    assert store.counts() == {"queries": 4, "slates": 2, "events": 0, "vectors": 0}  # equal lists stored once
    ka, kb = slate_key(a, "m1"), slate_key(b, "m1")
    got = store.slates([ka, kb, "nope"])
    assert set(got) == {ka, kb}
    for want, key in ((a, ka), (b, kb)):
        s = got[key]
        assert s.product_ids == want.product_ids and s.vector_keys == want.vector_keys and s.logged_ranks == want.logged_ranks
        for f in ("scores", "features", "mask", "query_vector"):
            w, g = getattr(want, f), getattr(s, f)
            assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), f
    assert store.recent_searches(3) == [("q2", "m1", b.product_ids), ("q3", "m1", a.product_ids), ("q4", "m1", b.product_ids)]
    assert [r[0] for r in store.recent_searches(100)] == ["q1", "q2", "q3", "q4"]


def test_vectors_round_trip(store):
    rows = [np.arange(4, dtype=np.float32), np.array([np.inf, -1.5], np.float32), np.zeros(0, np.float32)]
    store.put_vectors("k1", rows)
    store.put_vectors("k1", [np.ones(3, np.float32)])  # a known key is kept
    got = store.vectors(["k1", "missing"])
    assert list(got) == ["k1"] and [g.tobytes() for g in got["k1"]] == [r.tobytes() for r in rows]


def test_events_are_all_or_nothing(store):
    ok = [Event("click", "q1", "p1", position=1), Event("purchase", "q1", "p1", position=1, value=19.9)]
    assert store.record_events(ok) == 2
    bad = [Event("click", "q2", "p1"), Event("add_to_cart", "q2", "p1"), Event("like", "q2", "p1")]
    with pytest.raises(ValueError, match=r"events\[2\]\.action_name: 'like' is not one of impression, click, add_to_cart, purchase"):
        store.record_events(bad)
    with pytest.raises(ValueError, match=r"events\[1\]\.object_id"):
        store.record_events([Event("click", "q2", "p1"), Event("click", "q2", "")])
    with pytest.raises(ValueError, match=r"events\[0\]\.value"):
        store.record_events([Event("purchase", "q2", "p1", value=float("nan"))])
    assert store.counts()["events"] == 2
    assert store.record_events([]) == 0


def test_click_log_counts_a_hand_made_log(store):
    rng = np.random.default_rng(1)
    t = 1_700_000_000.0
    s1 = make_slate(rng, n=6, ids=[f"a{i}" for i in range(6)])
    s2 = make_slate(rng, n=3, ids=["b0", "b1", "b2"])
    s2.logged_ranks = [2, 1, 3]  # a randomisation swap of the first two
    store.log_searches([make_search("q1", s1, t, grid_columns=4), make_search("q2", s2, t + 10, randomised=True, grid_columns=2),
                        make_search("q3", s1, t + 20, model="m2")])
    store.record_events([Event("click", "q1", "a1", 2), Event("click", "q1", "a1", 2), Event("add_to_cart", "q1", "a1", 2),
                         Event("click", "q1", "a4", 5), Event("purchase", "q1", "a4", 5, value=5.0),
                         Event("impression", "q1", "a0", 1), Event("click", "q2", "b0", 1), Event("click", "q3", "a0", 1),
                         Event("click", "q-unknown", "a0", 1)])
    df = store.click_log()
    assert len(df) == 6 + 3 + 6
    assert list(df.columns) == ["query_id", "user_query", "timestamp", "model_version", "slate_key", "rank", "logged_rank",
                                "grid_row", "grid_col", "product_id", "score", "randomised", "click", "add_to_cart", "purchase"]
    q1 = df[df.query_id == "q1"].set_index("product_id")
    assert q1.loc["a1", ["click", "add_to_cart", "purchase"]].tolist() == [2, 1, 0]
    assert q1.loc["a4", ["click", "add_to_cart", "purchase"]].tolist() == [1, 0, 1]
    assert q1[["click", "add_to_cart", "purchase"]].to_numpy().sum() == 5  # the impression is not counted
    assert q1["rank"].tolist() == [1, 2, 3, 4, 5, 6] and q1.loc["a4", "grid_row"] == 2 and q1.loc["a4", "grid_col"] == 1
    assert np.array_equal(q1["score"].to_numpy(), s1.scores)
    q2 = df[df.query_id == "q2"]
    assert q2["logged_rank"].tolist() == [2, 1, 3] and q2["randomised"].all() and q2["click"].tolist() == [1, 0, 0]
    assert q2["grid_row"].tolist() == [1, 1, 2] and q2["grid_col"].tolist() == [1, 2, 1]
    assert all(str(df[c].dtype) == "int64" for c in ("click", "add_to_cart", "purchase", "rank", "logged_rank"))
    only_m2 = store.click_log(model_versions=["m2"])
    assert set(only_m2.query_id) == {"q3"} and only_m2["click"].tolist() == [1, 0, 0, 0, 0, 0]
    assert set(store.click_log(since=t + 5).query_id) == {"q2", "q3"}
    assert len(store.click_log(since=t + 1000)) == 0 and len(store.click_log(model_versions=[])) == 0


def test_purge_keeps_the_retention_window(store_url):
    now = time.time()  # put_vectors stamps rows with the clock
    rng = np.random.default_rng(2)
    shared, old_only = make_slate(rng), make_slate(rng)
    with open_store(store_url, HASH_KEY, retention_days=30) as st:
        st.log_searches([make_search("old", old_only, now - 40 * DAY), make_search("old2", shared, now - 35 * DAY),
                         make_search("new", shared, now - 1 * DAY)])
        st.record_events([Event("click", "old", old_only.product_ids[0], received=now - 40 * DAY),
                          Event("click", "old2", shared.product_ids[0], received=now - 1 * DAY),  # its search goes: so does it
                          Event("click", "new", shared.product_ids[0], received=now - 1 * DAY)])
        st.put_vectors(shared.vector_keys[0], [np.ones(2, np.float32)])
        st.put_vectors("unreferenced", [np.ones(2, np.float32)])
        gone = st.purge(now=now + 40 * DAY)  # 40 days on, the vectors put now are past the retention too
        st.put_vectors("fresh", [np.ones(2, np.float32)])
        assert st.purge(now=now)["queries"] == 0
        remaining = st.counts()
        assert [r[0] for r in st.recent_searches(10)] == []
    # the first purge ran 40 days later: everything older than now + 10 days went
    assert gone == {"queries": 3, "events": 3, "slates": 2, "vectors": 2}
    assert remaining == {"queries": 0, "slates": 0, "events": 0, "vectors": 1}
    with open_store(store_url, HASH_KEY, retention_days=30) as st:
        st.log_searches([make_search("old", old_only, now - 40 * DAY), make_search("new", shared, now - 1 * DAY)])
        st.record_events([Event("click", "new", shared.product_ids[0], received=now - 1 * DAY)])
        st.put_vectors(shared.vector_keys[0], [np.ones(2, np.float32)])
        assert st.purge(now=now) == {"queries": 1, "events": 0, "slates": 1, "vectors": 0}
        assert st.counts() == {"queries": 1, "slates": 1, "events": 1, "vectors": 2}
    with open_store(store_url, HASH_KEY, retention_days=0) as st:  # 0 keeps everything
        assert st.purge(now=now + 1e6) == {"queries": 0, "events": 0, "slates": 0, "vectors": 0}
        assert st.counts()["queries"] == 1


def test_hashing_is_keyed_and_raw_ids_are_never_stored(store_url, tmp_path):
    raw_client, raw_session = "client-RAW-7f3a9c", "session-RAW-b42d11"
    rng = np.random.default_rng(3)
    with open_store(store_url, HASH_KEY) as st:
        h = st.hash_id(raw_client)
        assert h == st.hash_id(raw_client) and len(h) == 32 and h != st.hash_id(raw_session) and st.hash_id(None) is None
        st.log_search(make_search("q1", make_slate(rng), time.time(), client_id=raw_client, session_id=raw_session))
        st.record_events([Event("click", "q1", "p1", client_id=raw_client, session_id=raw_session)])
        ev = next(st.iter_events())
        q = next(st.iter_queries())
        assert ev["client_id"] == q["client_id"] == h and ev["session_id"] == q["session_id"] == st.hash_id(raw_session)
        if st.dialect.name == "postgresql":
            with st._tx(write=False) as cur:
                dump = repr(cur.execute("SELECT * FROM queries").fetchall() + cur.execute("SELECT * FROM events").fetchall())
            assert raw_client not in dump and raw_session not in dump and h in dump
    with pytest.raises(StoreError, match="another hash key"):
        open_store(store_url, b"another key, 32 bytes long......")
    other = open_store(tmp_path / "other.sqlite", b"another key, 32 bytes long......")
    assert other.hash_id(raw_client) != h
    other.close()
    if store_url.startswith("sqlite:///"):
        path = Path(store_url[len("sqlite:///"):])
        data = b"".join(p.read_bytes() for p in path.parent.iterdir())
        assert raw_client.encode() not in data and raw_session.encode() not in data and h.encode() in data
        assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in path.parent.iterdir())


def test_concurrent_writers(store):
    rng = np.random.default_rng(4)
    slates = [make_slate(rng) for _ in range(4)]
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(25):
                qid = f"w{w}-{i}"
                store.log_search(make_search(qid, slates[i % 4], 1e9 + w * 100 + i))
                pid = slates[i % 4].product_ids[0]
                store.record_events([Event("click", qid, pid, 1), Event("add_to_cart", qid, pid, 1)])
                store.recent_searches(5)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.counts() == {"queries": 200, "slates": 4, "events": 400, "vectors": 0}
    assert int(store.click_log()["click"].sum()) == 200


def test_bulk_ten_thousand_searches(store):
    rng = np.random.default_rng(5)
    pool = [make_slate(rng, n=10, nf=12, nk=3, dim=64) for _ in range(2000)]
    logs = [make_search(f"q{i:05d}", pool[i % 2000], 1e9 + i, client_id=f"c{i % 97}") for i in range(10_000)]
    t0 = time.perf_counter()
    store.log_searches(logs)
    write_s = time.perf_counter() - t0
    store.record_events([Event("click", f"q{i:05d}", pool[i % 2000].product_ids[i % 10], i % 10 + 1) for i in range(0, 10_000, 3)])
    t0 = time.perf_counter()
    df = store.click_log()
    read_s = time.perf_counter() - t0
    assert store.counts()["queries"] == 10_000 and store.counts()["slates"] == 2000
    assert len(df) == 100_000 and int(df["click"].sum()) == len(range(0, 10_000, 3))
    print(f"\n{store.dialect.name}: log_searches 10^4 in {write_s:.2f} s, click_log 10^5 rows in {read_s:.2f} s")
    assert write_s < 60 and read_s < 60


def test_click_log_read_in_chunks_equals_one_chunk_and_an_independent_count(store, monkeypatch):
    """The log is read a chunk of rows at a time: chunks that split the searches and slates give the same frame,
    and each impression's counts equal a count of the recorded events done here."""
    import pandas as pd

    from fusionrank.feedback import store as store_module

    rng = np.random.default_rng(9)
    pool = [make_slate(rng, n=int(rng.integers(1, 8))) for _ in range(13)]  # slates shared by several searches
    logs = [make_search(f"q{i:03d}", pool[i % 13], 1e9 + i, model=f"m{i % 3}", randomised=bool(i % 4 == 0))
            for i in range(61)]
    store.log_searches(logs)
    events, want = [], {}
    for i in range(0, 61, 2):
        for action in ("click", "add_to_cart", "click", "purchase")[: 1 + i % 4]:
            pid = logs[i].slate.product_ids[(i * 7) % len(logs[i].slate.product_ids)]
            events.append(Event(action, logs[i].query_id, pid, 1))
            want[(logs[i].query_id, pid, action)] = want.get((logs[i].query_id, pid, action), 0) + 1
    store.record_events(events)
    whole = store.click_log()
    monkeypatch.setattr(store_module, "_CHUNK", 7)
    chunked = store.click_log()
    pd.testing.assert_frame_equal(chunked, whole)
    assert len(whole) == sum(len(x.slate.product_ids) for x in logs)
    for r in whole.itertuples():
        for action in ("click", "add_to_cart", "purchase"):
            assert getattr(r, action) == want.get((r.query_id, r.product_id, action), 0)
    assert whole["randomised"].sum() == sum(len(x.slate.product_ids) for x in logs if x.randomised)
    assert int(whole["click"].sum()) == sum(v for (_, _, a), v in want.items() if a == "click") > 0


def test_bad_urls_say_what_is_valid(tmp_path):
    with pytest.raises(StoreError, match=r"unknown event store URL scheme 'mysql'; use one of: sqlite:///PATH, postgresql://"):
        open_store("mysql://h/db", HASH_KEY)
    with pytest.raises(StoreError, match="absolute path"):
        open_store("sqlite://relative.db", HASH_KEY)
    with pytest.raises(StoreError, match="at least 16 bytes"):
        open_store(tmp_path / "x.sqlite", b"short")


def test_hash_key_file_is_made_once(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSIONRANK_EVENTS_HASH_KEY", raising=False)
    d = tmp_path / "data"
    k1 = hash_key_for(d)
    assert len(k1) == 32 and hash_key_for(d) == k1
    assert oct((d / "events.key").stat().st_mode & 0o777) == "0o600" and oct(d.stat().st_mode & 0o777) == "0o700"
    monkeypatch.setenv("FUSIONRANK_EVENTS_HASH_KEY", "a key from the environment")
    assert hash_key_for(d) == b"a key from the environment"


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fusionrank.feedback.schema import Event, SearchLog, ServedSlate
    from fusionrank.feedback.store import open_store
    st = open_store(sys.argv[1], bytes.fromhex(sys.argv[2]))
    i = 0
    while True:
        n = int(sys.argv[3])
        slate = ServedSlate([f"p{i + j}" for j in range(n)], np.ones(n, np.float32), np.ones((n, 4), np.float32),
                            np.ones((n, 2), bool), np.full(8, i, np.float32), [f"v{i + j}" for j in range(n)], list(range(1, n + 1)))
        st.log_search(SearchLog(f"s{i}", "query", time.time(), "m1", slate))  # committed without waiting for the disk
        batch = [Event("click", f"s{i}", f"p{i + j}", j + 1) for j in range(n)]
        st.record_events(batch)
        i += len(batch)
        print(i - 1, flush=True)  # acknowledged: every search and event up to this sequence number is committed
""")


@pytest.mark.parametrize("batch", [1, 7])
def test_acknowledged_events_survive_sigkill(store_url, batch):
    open_store(store_url, HASH_KEY).close()  # schema created before the writer starts
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", _WRITER, store_url, HASH_KEY.hex(), str(batch)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < 300 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            acked = int(line)
        os.kill(p.pid, signal.SIGKILL)  # mid-run: the writer is inside or between record_events calls
        p.wait(timeout=30)
        for line in p.stdout:  # lines printed before the kill are acknowledgements too
            if line.strip():
                acked = int(line)
    finally:
        if p.poll() is None:
            p.kill()
    assert acked >= 300, p.stderr.read()[-2000:]
    with open_store(store_url, HASH_KEY) as st:
        stored = {int(e["object_id"][1:]) for e in st.iter_events()}
        searches = st.searches([f"s{i}" for i in range(0, acked + 1, batch)])
    assert set(range(acked + 1)) <= stored
    assert len(stored) % batch == 0  # whole batches only: a batch is one transaction
    assert len(searches) == (acked + 1) // batch  # every search an acknowledged event names


def test_a_search_with_no_results(store):
    empty = ServedSlate([], np.zeros(0, np.float32), np.zeros((0, 7), np.float32), np.zeros((0, 3), bool),
                        np.ones(16, np.float32), [], [])
    rng = np.random.default_rng(6)
    store.log_searches([make_search("q0", empty, 1.0), make_search("q1", make_slate(rng, n=2), 2.0)])
    got = store.slates([slate_key(empty, "m1")])[slate_key(empty, "m1")]
    assert got.features.shape == (0, 7) and got.mask.shape == (0, 3) and got.product_ids == []
    assert store.recent_searches(5)[0] == ("q0", "m1", [])
    assert store.click_log()["query_id"].tolist() == ["q1", "q1"]
    with pytest.raises(ValueError, match=r"want \[n, F\] and \[n, K\]"):
        store.log_search(make_search("q2", ServedSlate(["a"], np.zeros(1, np.float32), np.zeros(7, np.float32),
                                                       np.zeros((1, 3), bool), np.ones(4, np.float32), ["va"], [1]), 3.0))


def test_click_log_dtypes_do_not_depend_on_the_rows(store):
    empty = store.click_log()
    store.log_search(make_search("q1", make_slate(np.random.default_rng(7), n=2), 1.0))
    store.record_events([Event("click", "q1", store.recent_searches(1)[0][2][0], 1)])
    assert empty.dtypes.to_dict() == store.click_log().dtypes.to_dict()


def test_sqlite_commits_are_synchronous_in_wal_mode(tmp_path):
    """Events (and every write but searches) fsync at commit; searches do not wait for the disk."""
    rng = np.random.default_rng(8)

    def synchronous(st):
        with st._tx(write=False) as cur:
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            return cur.execute("PRAGMA synchronous").fetchone()[0]

    with open_store(tmp_path / "e.sqlite", HASH_KEY) as st:
        assert synchronous(st) == 2  # FULL: fsync at every commit
        st.log_search(make_search("q1", make_slate(rng), 1.0))
        assert synchronous(st) == 1  # NORMAL: the search's commit did not fsync
        st.record_events([Event("click", "q1", "p1", 1)])
        assert synchronous(st) == 2  # the event's commit fsyncs the WAL, the search before it included
        st.put_vectors("k", [np.ones(2, np.float32)])
        assert synchronous(st) == 2


def test_sqlite_checkpoints_run_off_the_committing_thread(tmp_path):
    """Commits never checkpoint (``wal_autocheckpoint=0``); the store's own thread copies the WAL into the database."""
    path = tmp_path / "e.sqlite"
    rng = np.random.default_rng(9)
    st = open_store(path, HASH_KEY)
    try:
        with st._tx(write=False) as cur:
            assert cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        size0 = path.stat().st_size
        st.log_searches([make_search(f"q{i}", make_slate(rng, n=10, dim=384), float(i)) for i in range(300)])
        deadline = time.monotonic() + 10
        while path.stat().st_size <= size0 and time.monotonic() < deadline:  # only a checkpoint writes the main file
            time.sleep(0.05)
        assert path.stat().st_size > size0
        assert st._checkpointer.is_alive()
    finally:
        st.close()
    assert not st._checkpointer.is_alive()  # close stops it
    with open_store(path, HASH_KEY) as again:
        assert again.counts()["queries"] == 300


def test_a_damaged_store_file_is_named_and_left_alone(tmp_path):
    from fusionrank.feedback.store import StoreError, open_store

    bad = tmp_path / "events.sqlite"
    junk = bytes(range(256)) * 20
    bad.write_bytes(junk)
    with pytest.raises(StoreError, match=rf"{bad}: not a readable event store .*nothing was changed"):
        open_store(bad, b"0123456789abcdef0123")
    assert bad.read_bytes() == junk
