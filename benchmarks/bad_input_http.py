"""Bad HTTP input against the real service: every case's status and ``detail``; the goal is 0 5xx and 0 tracebacks.

    .venv/bin/python benchmarks/bad_input_http.py [--model MODEL_DIR] [--out benchmarks/results/bad_input_http.md]

Without ``--model`` the tiny test model is trained into a scratch folder first (as
``benchmarks/crash_runs.py`` does). The service (its own copy of the index) runs under
uvicorn on a loopback port, configured as ``fusionrank serve`` configures it; requests go
through httpx, and a few malformed ones through a raw socket.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
RESULTS = ROOT / "benchmarks" / "results"
ADMIN, EVENTS = "bad-admin", "bad-events"


def start(app):
    import uvicorn

    from fusionrank.serving.http.app import H11_MAX_INCOMPLETE_EVENT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def raw(port: int, data: bytes) -> tuple[int | None, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if b"\r\n\r\n" in buf and len(buf) > 400:
                    break
        except (ConnectionResetError, socket.timeout):
            if not buf:
                return None, "connection reset / no answer"
    if not buf:
        return None, "connection closed without an answer"
    line = buf.split(b"\r\n", 1)[0].decode(errors="replace")
    body = buf.split(b"\r\n\r\n", 1)[1].decode(errors="replace") if b"\r\n\r\n" in buf else ""
    return int(line.split()[1]), body[:200]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "bad_input_http.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bad-http-"))
    os.environ.setdefault("FUSIONRANK_HOME", str(work / "home"))
    if args.model is None:
        from crash_runs import build_model

        args.model = build_model(work, {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    up = work / "uploads"
    up.mkdir()
    os.environ["FUSIONRANK_UPLOAD_ROOTS"] = str(up)
    import httpx
    import torch

    torch.set_num_threads(1)
    from crash_harness import prepare_model
    from fusionrank.serving.app import create_app
    from fusionrank.serving.build import open_service

    model = prepare_model(args.model, work / "model", {**os.environ, "PYTHONPATH": str(ROOT / "src")})
    log_buf = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(log_buf))
    svc = open_service(model, log=lambda m: None)
    photo = next(p for p in svc.index.records["image"][:svc.index.n_rows] if p)
    shutil.copy(photo, up / "ok.jpg")
    (up / "notes.jpg").write_text("not an image: -----BEGIN PRIVATE KEY-----")
    (up / "trailing.jpg").write_bytes(Path(photo).read_bytes() + b"HIDDEN-SECRET")
    (up / "escape.jpg").symlink_to("/etc/hostname")
    app = create_app(svc, ADMIN, EVENTS, events_rate=1000, events_burst=1000)
    server, port = start(app)
    url = f"http://127.0.0.1:{port}"
    A, E = {"X-API-Key": ADMIN}, {"X-API-Key": EVENTS}
    c = httpx.Client(base_url=url, timeout=60)
    s = c.get("/search", params={"q": "blue shirt", "k": 3}).json()
    ev = {"type": "click", "search_id": s["search_id"], "model_version": s["model_version"],
          "product_id": s["results"][0]["product_id"], "position": 1}
    pid = s["results"][0]["product_id"]

    def ev_raw(extra: str) -> str:
        return json.dumps({"events": [ev]})[:-3] + extra + "}]}"

    J = {"content-type": "application/json"}
    cases = [
        # class, input description, request thunk
        ("search params", "q missing", lambda: c.get("/search")),
        ("search params", "q empty", lambda: c.get("/search", params={"q": ""})),
        ("search params", "q only spaces", lambda: c.get("/search", params={"q": "   "})),
        ("search params", "q of 257 characters", lambda: c.get("/search", params={"q": "x" * 257})),
        ("search params", "q with a NUL byte", lambda: c.get("/search", params={"q": "shirt\x00"})),
        ("search params", "q invalid UTF-8 (%ff%fe)", lambda: c.get("/search?q=%ff%fe")),
        ("search params", "q = emoji + RTL override", lambda: c.get("/search", params={"q": "\U0001F600\u202eshirt"})),
        ("search params", "k = 0", lambda: c.get("/search", params={"q": "shirt", "k": 0})),
        ("search params", "k = 101", lambda: c.get("/search", params={"q": "shirt", "k": 101})),
        ("search params", "k = 'ten'", lambda: c.get("/search", params={"q": "shirt", "k": "ten"})),
        ("search params", "k = 1e3", lambda: c.get("/search", params={"q": "shirt", "k": "1e3"})),
        ("search params", "k = 99999999999999999999", lambda: c.get("/search", params={"q": "shirt", "k": "9" * 20})),
        ("search params", "explain = 'maybe'", lambda: c.get("/search", params={"q": "shirt", "explain": "maybe"})),
        ("search params", "unknown category", lambda: c.get("/search", params={"q": "shirt", "category": "Spaceships"})),
        ("search params", "category of 201 characters", lambda: c.get("/search", params={"q": "shirt", "category": "c" * 201})),
        ("URL", "URL of 9,000 bytes", lambda: c.get("/search", params={"q": "x" * 9000})),
        ("URL", "URL of 200,000 bytes", lambda: raw(port, b"GET /search?q=" + b"x" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("URL", "URL of 400,000 bytes (beyond the server's request-head buffer)", lambda: raw(port, b"GET /search?q=" + b"x" * 400_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("URL", "malformed request line", lambda: raw(port, b"GET /search?q=a b c HTTP/9.9\r\n\r\n")),
        ("URL", "POST /search (wrong method)", lambda: c.post("/search", params={"q": "shirt"})),
        ("ids", "GET /products/<201 characters>", lambda: c.get("/products/" + "x" * 201)),
        ("ids", "GET /products/%00", lambda: c.get("/products/%00")),
        ("ids", "GET /products/..%2F..%2Fetc%2Fpasswd", lambda: c.get("/products/..%2F..%2Fetc%2Fpasswd")),
        ("ids", "GET /products/<unknown>", lambda: c.get("/products/nope")),
        ("ids", "GET /products/<unknown>/image", lambda: c.get("/products/nope/image")),
        ("ids", "PUT /products/a&amp;b (an entity)", lambda: c.put("/products/a&amp;b", json={"title": "x"}, headers=A)),
        ("ids", "PUT /products/ｆｕｌｌ (full-width)", lambda: c.put("/products/ｆｕｌｌ", json={"title": "x"}, headers=A)),
        ("ids", "PUT /products/a%C2%A0b (no-break space)", lambda: c.put("/products/a%C2%A0b", json={"title": "x"}, headers=A)),
        ("ids", "PUT /products/%20a (leading space)", lambda: c.put("/products/%20a", json={"title": "x"}, headers=A)),
        ("ids", "body product_id differs from the path", lambda: c.put("/products/p1", json={"title": "x", "product_id": "p2"}, headers=A)),
        ("keys", "PUT without a key", lambda: c.put("/products/p1", json={"title": "x"})),
        ("keys", "PUT with the events key", lambda: c.put("/products/p1", json={"title": "x"}, headers=E)),
        ("keys", "PUT with a wrong key", lambda: c.put("/products/p1", json={"title": "x"}, headers={"X-API-Key": "guess"})),
        ("keys", "DELETE with the events key", lambda: c.delete(f"/products/{pid}", headers=E)),
        ("keys", "POST /admin/snapshot with the events key", lambda: c.post("/admin/snapshot", headers=E)),
        ("keys", "POST /admin/model path=/etc (admin key)", lambda: c.post("/admin/model", json={"path": "/etc"}, headers=A)),
        ("keys", "X-API-Key with non-ASCII bytes", lambda: raw(port, b"POST /events HTTP/1.1\r\nHost: x\r\nX-API-Key: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}")),
        ("keys", "GET /stats without a key: model path shown?", lambda: c.get("/stats")),
        ("bodies", "PUT body not JSON", lambda: c.put("/products/p1", content=b"{title: x", headers={**A, **J})),
        ("bodies", "PUT body a JSON array", lambda: c.put("/products/p1", json=[{"title": "x"}], headers=A)),
        ("bodies", "PUT empty body", lambda: c.put("/products/p1", content=b"", headers={**A, **J})),
        ("bodies", "PUT without title", lambda: c.put("/products/p1", json={"brand": "x"}, headers=A)),
        ("bodies", "PUT title of 1,001 characters", lambda: c.put("/products/p1", json={"title": "t" * 1001}, headers=A)),
        ("bodies", "PUT title a number", lambda: c.put("/products/p1", json={"title": 5}, headers=A)),
        ("bodies", "PUT attributes nested", lambda: c.put("/products/p1", json={"title": "x", "attributes": {"a": {"b": 1}}}, headers=A)),
        ("bodies", "PUT title with invalid UTF-8 bytes", lambda: c.put("/products/p1", content=b'{"title": "\xff\xfe"}', headers={**A, **J})),
        ("bodies", "PUT body with NaN", lambda: c.put("/products/p1", content=b'{"title": "x", "weight": NaN}', headers={**A, **J})),
        ("bodies", "PUT description of 5 MB", lambda: c.put("/products/p1", json={"title": "x", "description": "d" * 5_000_000}, headers=A)),
        ("bodies", "PUT 10,000-deep nested JSON", lambda: c.put("/products/p1", content=b'{"title":"x","z":' + b"[" * 10000 + b"]" * 10000 + b"}", headers={**A, **J})),
        ("media paths", "image = /etc/passwd", lambda: c.put("/products/p1", json={"title": "x", "image": "/etc/passwd"}, headers=A)),
        ("media paths", "image = ../../../../etc/passwd", lambda: c.put("/products/p1", json={"title": "x", "image": "../../../../etc/passwd"}, headers=A)),
        ("media paths", "image = <upload root>/../../etc/hostname", lambda: c.put("/products/p1", json={"title": "x", "image": str(up / ".." / ".." / "etc" / "hostname")}, headers=A)),
        ("media paths", "image = a symlink in the upload root to /etc/hostname", lambda: c.put("/products/p1", json={"title": "x", "image": str(up / "escape.jpg")}, headers=A)),
        ("media paths", "image = missing file in the upload root", lambda: c.put("/products/p1", json={"title": "x", "image": str(up / "missing.jpg")}, headers=A)),
        ("media paths", "image = text file named .jpg in the upload root", lambda: c.put("/products/p1", json={"title": "x", "image": str(up / "notes.jpg")}, headers=A)),
        ("media paths", "audio = a JPEG", lambda: c.put("/products/p1", json={"title": "x", "audio": str(up / "ok.jpg")}, headers=A)),
        ("media paths", "image = https URL", lambda: c.put("/products/p1", json={"title": "x", "image": "https://example.com/a.jpg"}, headers=A)),
        ("media paths", "image = file:///etc/shadow", lambda: c.put("/products/p1", json={"title": "x", "image": "file:///etc/shadow"}, headers=A)),
        ("media paths", "image path with a NUL byte", lambda: c.put("/products/p1", json={"title": "x", "image": str(up / "ok.jpg") + "\x00.png"}, headers=A)),
        ("media paths", "image of 4,097 characters", lambda: c.put("/products/p1", json={"title": "x", "image": "/" + "a" * 4096}, headers=A)),
        ("media paths", "image with bytes appended, then GET /image: secret served?", lambda: (c.put("/products/tr1", json={"title": "x", "image": str(up / "trailing.jpg")}, headers=A), c.get("/products/tr1/image"))[1]),
        ("events", "POST /events without a key", lambda: c.post("/events", json={"events": [ev]})),
        ("events", "POST /events with a wrong key", lambda: c.post("/events", json={"events": [ev]}, headers={"X-API-Key": "x"})),
        ("events", "search id this service never issued", lambda: c.post("/events", json={"events": [{**ev, "search_id": "0" * 32}]}, headers=E)),
        ("events", "product not in that search's results", lambda: c.post("/events", json={"events": [{**ev, "product_id": "zzz"}]}, headers=E)),
        ("events", "timestamp NaN", lambda: c.post("/events", content=ev_raw(', "timestamp": NaN'), headers={**E, **J})),
        ("events", "value Infinity", lambda: c.post("/events", content=ev_raw(', "value": Infinity'), headers={**E, **J})),
        ("events", "timestamp in the year 3000", lambda: c.post("/events", json={"events": [{**ev, "timestamp": 32503680000}]}, headers=E)),
        ("events", "timestamp 1e300", lambda: c.post("/events", content=ev_raw(', "timestamp": 1e300'), headers={**E, **J})),
        ("events", "timestamp -1", lambda: c.post("/events", json={"events": [{**ev, "timestamp": -1}]}, headers=E)),
        ("events", "value -5", lambda: c.post("/events", json={"events": [{**ev, "value": -5}]}, headers=E)),
        ("events", "type 'like'", lambda: c.post("/events", json={"events": [{**ev, "type": "like"}]}, headers=E)),
        ("events", "an unknown field", lambda: c.post("/events", json={"events": [{**ev, "user": "bob"}]}, headers=E)),
        ("events", "1,001 events in a batch", lambda: c.post("/events", json={"events": [ev] * 1001}, headers=E)),
        ("events", "position 0", lambda: c.post("/events", json={"events": [{**ev, "position": 0}]}, headers=E)),
        ("events", "body not JSON", lambda: c.post("/events", content=b"events=1", headers={**E, **J})),
    ]
    rows, fives = [], 0
    for i, (cls, what, call) in enumerate(cases, 1):
        try:
            r = call()
            if isinstance(r, tuple):
                status, detail = r
            else:
                status = r.status_code
                try:
                    detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
                except ValueError:
                    detail = None
                if detail is None:
                    detail = f"({r.headers.get('content-type', '-')}, {len(r.content):,} bytes)"
                    if what.startswith("image with bytes appended"):
                        detail += "; appended bytes served: " + ("YES" if b"HIDDEN-SECRET" in r.content else "no")
                if what.startswith("GET /stats"):
                    detail = "model_path shown: " + ("YES" if "model_path" in r.json() else "no")
        except Exception as e:  # noqa: BLE001 - the client failed: recorded as no answer
            status, detail = None, f"client error: {type(e).__name__}: {str(e)[:80]}"
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        fives += status is None or status >= 500
        rows.append((i, cls, what, status, detail.replace("|", "\\|").replace("\n", " ")[:160]))
        print(rows[-1], flush=True)
    # the events key's rate limit: a fresh app with a small bucket
    app2 = create_app(svc, ADMIN, EVENTS, events_rate=2, events_burst=5)
    server2, port2 = start(app2)
    with httpx.Client(base_url=f"http://127.0.0.1:{port2}", timeout=30) as c2:
        codes = [c2.post("/events", json={"events": [ev]}, headers=E).status_code for _ in range(12)]
    rows.append((len(rows) + 1, "events", "12 requests at once with the events key (rate 2/s, burst 5)", codes[-1],
                 f"statuses: {', '.join(map(str, codes))}"))
    server.should_exit = server2.should_exit = True
    time.sleep(1)
    tracebacks = log_buf.getvalue().count("Traceback")
    by_class: dict[str, int] = {}
    for r in rows:
        by_class[r[1]] = by_class.get(r[1], 0) + 1
    L = ["# Bad HTTP input: status and detail per case", "",
         f"`.venv/bin/python benchmarks/bad_input_http.py` ({time.strftime('%Y-%m-%d')}): {len(rows)} cases "
         f"({', '.join(f'{k} {v}' for k, v in by_class.items())}) against the real service under uvicorn (tiny test model, "
         f"`FUSIONRANK_UPLOAD_ROOTS` set to a scratch folder). **{fives} answered 5xx or not at all; {tracebacks} tracebacks "
         "in the server log.**", "",
         "| # | class | input | status | detail |", "|---:|---|---|---:|---|"]
    L += [f"| {i} | {cls} | {what.replace('|', '/')} | {status} | {detail} |" for i, cls, what, status, detail in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(L) + "\n")
    print(f"{len(rows)} cases, {fives} 5xx/no answer, {tracebacks} tracebacks; wrote {args.out}")


if __name__ == "__main__":
    main()
