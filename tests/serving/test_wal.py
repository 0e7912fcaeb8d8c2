"""The append-only logs: a crash at any byte of the last record loses nothing acknowledged before it,
a damaged line in the middle is reported and skipped (never the records after it), old plain lines are read."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from fusionrank.serving.wal import RecordLog, encode_record, read_all, scan


def _records(n):
    return [{"i": i, "text": f"é{i}" * (i % 5), "nested": {"v": [i, i / 3]}} for i in range(n)]


def _write(path, recs):
    log = RecordLog(path, log=None)
    for r in recs:
        log.append(r)
    log.close()


def test_every_line_is_still_a_json_object(tmp_path):
    _write(tmp_path / "a.jsonl", _records(3))
    lines = [json.loads(l) for l in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in l.items() if k != "_crc"} for l in lines] == _records(3)
    assert stat.S_IMODE(os.stat(tmp_path / "a.jsonl").st_mode) == 0o600


def test_nan_and_infinity_are_never_written(tmp_path):
    log = RecordLog(tmp_path / "a.jsonl", log=None)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            log.append({"ok": 1}, {"x": bad})
    log.close()
    assert (tmp_path / "a.jsonl").read_bytes() == b""


@pytest.mark.parametrize("name", ["changes.jsonl", "searches.jsonl", "events.jsonl"])
def test_truncated_at_every_byte_of_the_last_record(tmp_path, name):
    recs = _records(6)
    path = tmp_path / name
    _write(path, recs)
    full = path.read_bytes()
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start, len(full) + 1):
        path.write_bytes(full[:cut])
        msgs = []
        log = RecordLog(path, log=msgs.append)
        complete = cut == len(full)
        assert log.records == (recs if complete else recs[:-1]), cut
        assert log.repair.torn_bytes == (0 if complete or cut == last_start else cut - last_start)
        assert bool(msgs) == bool(log.repair.torn_bytes)
        log.release_records()
        log.append({"after": cut})  # a new record starts on its own line: nothing merges
        log.close()
        again, rep = scan(path, log=None)
        assert again == (recs if complete else recs[:-1]) + [{"after": cut}] and not rep.repaired, cut
        for torn in tmp_path.glob(name + ".torn-*"):  # the cut bytes are kept, not thrown away
            assert full.startswith(full[:last_start] + torn.read_bytes())
            torn.unlink()


def test_a_damaged_middle_line_is_reported_and_the_rest_kept(tmp_path):
    recs = _records(5)
    path = tmp_path / "events.jsonl"
    _write(path, recs)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')  # a flipped byte: the checksum fails
    path.write_bytes(b"".join(lines))
    msgs = []
    log = RecordLog(path, log=msgs.append)
    assert log.records == recs[:2] + recs[3:]
    assert len(log.repair.corrupt) == 1 and "failed their checksum" in msgs[0]
    assert log.repair.as_dict()["corrupt_lines"] == 1


def test_old_plain_lines_and_a_merged_line_from_the_old_code(tmp_path):
    """The old code appended onto a torn line; replay then stopped there. Now only the merged line is lost."""
    path = tmp_path / "changes.jsonl"
    path.write_bytes(b'{"op": "delete", "product_id": "a"}\n{"op": "del' + b'{"op": "delete", "product_id": "b"}\n'
                     + b'{"op": "delete", "product_id": "c"}\n' + encode_record({"op": "delete", "product_id": "d"}))
    log = RecordLog(path, log=None)
    assert [r["product_id"] for r in log.records] == ["a", "c", "d"]
    assert log.repair.legacy == 2 and len(log.repair.corrupt) == 1


def test_size_rotation_keeps_every_record(tmp_path):
    path = tmp_path / "events.jsonl"
    log = RecordLog(path, max_bytes=300, log=None)
    recs = _records(40)
    for r in recs:
        log.append(r)
    log.close()
    assert len(list(tmp_path.glob("events.jsonl.*"))) > 3
    assert all(os.path.getsize(p) <= 300 for p in tmp_path.glob("events.jsonl*"))
    assert list(read_all(path)) == recs
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in tmp_path.glob("events.jsonl*"))


def _vec(idx, row):
    return {t: (idx.emb[t][row].copy() if idx.emb_mask[t][row] else None) for t in ("title", "image_proj", "transcript")}


def test_index_change_log_cut_at_every_byte_of_its_last_record(tiny_model, tmp_path):
    """SearchIndex.load after a crash in the last append: all earlier changes replayed, the torn one reported."""
    from serving_fixtures import serving_index
    from fusionrank.serving import SearchIndex

    idx = serving_index(tiny_model[0])
    d = idx.save(tmp_path / "index")
    pids = [str(p) for p in idx.records["product_id"][:4]]
    idx.delete(pids[0])
    idx.delete(pids[1])
    from fusionrank.serving.index import RECORD_COLUMNS

    rec = {c: idx.records[c][5] for c in RECORD_COLUMNS}
    rec["product_id"] = "new-1"
    idx.upsert(rec, {f: idx.lex_text[f][5] for f in idx.lex_text}, _vec(idx, 5), attributes={"fabric": "mesh"})
    idx.delete(pids[2])  # the last record: cut below
    idx.close()
    full = (d / "changes.jsonl").read_bytes()
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    cuts = sorted({last_start, last_start + 1, len(full) - 2, len(full) - 1, len(full),
                   *np.linspace(last_start, len(full), 8).astype(int).tolist()})
    for cut in cuts:
        (d / "changes.jsonl").write_bytes(full[:cut])
        msgs = []
        back = SearchIndex.load(d, log=msgs.append)
        assert pids[0] not in back.row_of and pids[1] not in back.row_of
        assert back.product("new-1")["attributes"] == {"fabric": "mesh"}
        assert (pids[2] in back.row_of) == (cut < len(full)), cut
        torn = 0 < cut - last_start < len(full) - last_start
        assert back.log_repair["torn_bytes"] == (cut - last_start if torn else 0)
        assert ("REPAIRED" in " ".join(msgs)) == torn
        back.delete(pids[3])  # appended after the repair: found at the next load
        back.close()
        again = SearchIndex.load(d, log=lambda m: None)
        assert pids[3] not in again.row_of and "new-1" in again.row_of
        again.close()


def test_index_replays_past_a_damaged_change(tiny_model, tmp_path):
    from serving_fixtures import serving_index
    from fusionrank.serving import SearchIndex

    idx = serving_index(tiny_model[0])
    d = idx.save(tmp_path / "index")
    pids = [str(p) for p in idx.records["product_id"][:3]]
    for p in pids:
        idx.delete(p)
    idx.close()
    lines = (d / "changes.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:20] + b"X" + lines[1][21:]
    (d / "changes.jsonl").write_bytes(b"".join(lines))
    msgs = []
    back = SearchIndex.load(d, log=msgs.append)
    assert pids[0] not in back.row_of and pids[1] in back.row_of and pids[2] not in back.row_of
    assert back.log_repair["corrupt_lines"] == 1 and "failed their checksum" in " ".join(msgs)


def test_concurrent_appends_share_fsyncs_and_interleave_whole_lines(tmp_path):
    import threading

    log = RecordLog(tmp_path / "events.jsonl", max_bytes=4000, log=None)

    def work(t):
        for i in range(200):
            log.append({"t": t, "i": i, "pad": "x" * (i % 17)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    got = list(read_all(tmp_path / "events.jsonl"))
    assert len(got) == 1200 and all(not scan(p, repair=False, log=None)[1].repaired for p in tmp_path.iterdir())
    for t in range(6):
        assert [r["i"] for r in got if r["t"] == t] == list(range(200))
    assert log.fsyncs <= 1200


@pytest.mark.parametrize("complete", [True, False])
def test_a_crash_between_the_snapshot_renames_is_recovered(tiny_model, tmp_path, complete):
    """save() renames index -> index.old, then index.tmp -> index; a crash in between left no index."""
    import shutil

    from serving_fixtures import serving_index
    from fusionrank.serving import SearchIndex

    idx = serving_index(tiny_model[0])
    d = idx.save(tmp_path / "index")
    pid = str(idx.records["product_id"][0])
    idx.delete(pid)  # logged in the old snapshot's change log
    idx.close()
    shutil.copytree(d, tmp_path / "index.old")
    if complete:  # the new snapshot was fully written: it already holds the delete
        back = SearchIndex.load(d, log=lambda m: None)
        back.save(tmp_path / "snap")
        back.close()
        shutil.move(tmp_path / "snap", tmp_path / "index.tmp")
    else:  # the new snapshot was cut short: no changes.jsonl yet
        (tmp_path / "index.tmp").mkdir()
        (tmp_path / "index.tmp" / "index.json").write_text("{}")
    shutil.rmtree(d)
    msgs = []
    back = SearchIndex.load(d, log=msgs.append)
    assert pid not in back.row_of and len(back) == 119
    assert ("recovered the new snapshot" if complete else "recovered the previous snapshot") in " ".join(msgs)
