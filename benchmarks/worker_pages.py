"""Where a forked worker's own memory comes from, stage by stage: its page frames against its supervisor's.

    python benchmarks/worker_pages.py [--model M] [--searches 1,10,100,750,1500] [--stem worker_pages]

Loads the service as ``fusionrank serve --workers N --start-method fork`` does (``load_shared_service``, the event
store closed, ``settle_before_fork``), then forks one child, which opens what is per process
(``start_worker_service``) and runs searches through ``SearchService.search``, in distinct fashion44k train and dev
queries, stopping after each stage. There the loaded parent reads the child's ``/proc/PID/pagemap`` and its own over
every writable mapping: a page the child holds in a frame the parent does not (copied on its first write, or new)
is the child's own. It is split by where it lies: Python's object arenas and other anonymous mappings, malloc's
heap, and the rest (libraries' data, stacks), and how much of it holds the same bytes as the parent's page there
(written, then back as it was). The child's ``Private_Dirty`` (``smaps_rollup``) is printed beside it as a check. No HTTP: what the request path adds is ``benchmarks/fork_floor.py``'s.

Baseline, same run: once the child has ended, the parent returns its free heap and runs the same searches itself,
as one process; what its anonymous memory grows by is what those searches keep. The ratio, worker's own over that,
is what the fork costs beyond the searches' own allocations. Reading page frames needs root (CAP_SYS_ADMIN).
Writes ``benchmarks/results/STEM.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import HOME, log, machine, queries, report, rollup  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT, FRAME = np.uint64(1 << 63), np.uint64((1 << 55) - 1)


def writable_mappings(pid: int) -> list[tuple[int, int, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            p = line.split()
            if "w" in p[1]:
                a, b = (int(x, 16) for x in p[0].split("-"))
                out.append((a, b, p[5] if len(p) > 5 else ""))
    return out


def frames(pid: int, a: int, b: int) -> np.ndarray:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(a // PAGE * 8)
        return np.frombuffer(f.read((b - a) // PAGE * 8), np.uint64)


def own_pages(child: int) -> dict[str, int]:
    """Pages of ``child`` in frames this process does not map at the same address, by where they lie (bytes), and
    ``identical``: those of them that this process also holds and whose bytes equal its page there (copied, then
    written back as they were: reference counts up and down again), which the kernel's same-page merging could
    share again."""
    out = {"anonymous": 0, "heap": 0, "other": 0, "identical": 0}
    with open(f"/proc/{child}/mem", "rb", buffering=0) as theirs_mem, open("/proc/self/mem", "rb", buffering=0) as my_mem:
        for a, b, name in writable_mappings(child):
            try:
                mine, theirs = frames(child, a, b), frames(os.getpid(), a, b)
            except OSError:  # a mapping that cannot be read (vsyscall)
                continue
            if len(mine) != len(theirs):
                continue
            have = (mine & PRESENT) != 0
            both = have & ((theirs & PRESENT) != 0)
            shared = both & ((mine & FRAME) == (theirs & FRAME))
            where = "heap" if name == "[heap]" else "anonymous" if name == "" else "other"
            out[where] += int((have & ~shared).sum()) * PAGE
            for i in np.flatnonzero(both & ~shared):
                at = a + int(i) * PAGE
                try:
                    theirs_mem.seek(at)
                    my_mem.seek(at)
                    out["identical"] += PAGE * (theirs_mem.read(PAGE) == my_mem.read(PAGE))
                except OSError:
                    continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=HOME / "models" / "demo")
    ap.add_argument("--searches", default="1,10,100,750,1500", help="stops, in searches done (increasing)")
    ap.add_argument("--stem", default="worker_pages")
    a = ap.parse_args()
    stops = [int(x) for x in a.searches.split(",")]
    if stops != sorted(stops) or stops[0] < 1:
        raise SystemExit("--searches: increasing counts from 1")
    if not (a.model / "index").exists():
        raise SystemExit(f"{a.model} has no index: run `fusionrank demo` (or `fusionrank index MODEL`) first")
    if not (frames(os.getpid(), *writable_mappings(os.getpid())[0][:2]) & FRAME).any():  # unprivileged, the kernel
        raise SystemExit("/proc/PID/pagemap gives no page frames here: run as root")  # keeps the present bits, zeroes frames
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import gc

    import torch

    from fusionrank.serving import workers as W

    W.set_malloc_arenas(1)  # as a supervisor of workers that rank one search at a time
    torch.set_num_threads(1)
    cfg = W.service_config(a.model, a.model / "index")
    svc = W.load_shared_service(cfg, lambda m: None)
    svc.close_events()
    qs = queries(stops[-1])
    if len(qs) < stops[-1]:
        raise SystemExit(f"only {len(qs):,} distinct queries: --searches at most that")
    W.settle_before_fork()
    res = {"model": str(a.model), "products": len(svc.index), "machine": machine(), "stages": [],
           "command": " ".join(["python benchmarks/worker_pages.py", *sys.argv[1:]])}
    stages = ["forked", "per-process state opened"] + [f"{n:,} search{'es' if n > 1 else ''}" for n in stops]
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            def stop() -> None:
                os.write(from_child, b"x")
                os.read(to_child, 1)
            stop()
            W.start_worker_service(svc, cfg, 1, "fork", lambda m: None)
            stop()
            done = 0
            for n in stops:
                for q in qs[done:n]:
                    svc.search(q, k=10)
                done = n
                stop()
            code = 0
        finally:
            os._exit(code)
    for name in stages:
        if not os.read(to_parent, 1):
            raise SystemExit(f"the worker ended before '{name}'")
        own = own_pages(pid)
        res["stages"].append({"stage": name, **{k: v // 1024 for k, v in own.items()},
                              "private_dirty_kb": rollup(pid).get("Private_Dirty", 0)})
        log(f"{name}: {(own['anonymous'] + own['heap'] + own['other']) / 2**20:.1f} MB of its own, "
            f"{own['identical'] / 2**20:.1f} MB of it as the supervisor's")
        os.write(from_parent, b"x")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("the worker failed (its traceback is above)")
    gc.unfreeze()
    W.release_free_heap()  # what measuring freed: the searches below grow the heap, not refill it
    base = rollup(os.getpid()).get("Anonymous", 0)
    done = 0
    for n, st in zip(stops, res["stages"][2:]):
        for q in qs[done:n]:
            svc.search(q, k=10)
        done = n
        st["one_process_growth_kb"] = rollup(os.getpid()).get("Anonymous", 0) - base
    svc.close()

    def mb(kb: int) -> str:
        return f"{kb / 1024:.1f}"

    lines = ["# A forked worker's own memory, stage by stage (page frames against its supervisor's)", "",
             f"`{res['command']}`; model `{res['model']}`, {res['products']:,} products; searches through "
             "`SearchService.search` (k=10, explained), distinct fashion44k train and dev queries, no HTTP. *Own*: pages "
             "the worker holds in frames its supervisor does not share at that address. *One process*: how much the "
             "loaded supervisor's anonymous memory grows when it runs the same searches itself, after the worker ended.",
             "*Same bytes*: own pages whose content equals the supervisor's page at that address (written, then back as they "
             "were), which the kernel's same-page merging (KSM) could share again.",
             "", "| stage | worker's own (MB) | in anonymous mappings (Python's arenas) | in malloc's heap | elsewhere | "
             "same bytes as the supervisor's | worker's Private_Dirty | one process grows by | own / one process |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for st in res["stages"]:
        own = st["anonymous"] + st["heap"] + st["other"]
        grow = st.get("one_process_growth_kb")
        lines.append(f"| {st['stage']} | {mb(own)} | {mb(st['anonymous'])} | {mb(st['heap'])} | {mb(st['other'])} | "
                     f"{mb(st['identical'])} | {mb(st['private_dirty_kb'])} | {mb(grow) if grow is not None else '-'} | "
                     f"{f'{own / grow:.1f}x' if grow and grow >= 2 * PAGE // 1024 else '-'} |")
    report(a.stem, res, lines)


if __name__ == "__main__":
    main()
