"""The generalisation check: fashion44k dev queries in words and phrasings no training query used.

    .venv/bin/python benchmarks/generalisation.py [--model ~/.cache/fusionrank/models/fashion44k-full]
    .venv/bin/python benchmarks/generalisation.py --model shipped=DIR_A --model new=DIR_B --no-ablations

Three parts, all derived from the 500 dev queries (never trained on), with the dev grades
(the meaning of each query is unchanged):

- **train-like**: the dev queries as they are;
- **new phrasing**: each dev query parsed into brand/usage, colour, gender and article type and
  rendered in a template the training queries never use (the type first, the colour after the
  type, "in", "with", "coloured", "show me" ...);
- **synonyms**: one article-type, colour or gender word of each dev query replaced by a shopper's
  word for it from ``benchmarks/data/generalisation_words.toml``, written by hand and read by
  nothing else; a synonym is used only if none of its words occurs in any train or dev query.

Systems, on both title fields, full catalogue, NDCG@10 (gain 2^g - 1):

- the BM25+MiniLM hybrid (min-max blend, weight tuned on held-out training queries);
- each model given (``--model [LABEL=]DIR``, repeatable) with its queries as typed (``understanding`` off);
- the same model with its query understanding, and with each of its parts switched off.

The hybrid runs over its own tables (plain MiniLM title vectors, BM25 over the titles as they are: no
model's adapter or photo colour); its weight is tuned on the first model's held-out training queries. The
first model's workspace gives the queries and grades.

Writes ``benchmarks/results/generalisation.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusionrank import schema as S  # noqa: E402
from fusionrank.encoders.text import tokenize  # noqa: E402
from fusionrank.experiment import split_frame, evaluate_pipeline  # noqa: E402
from fusionrank.ingest import Catalog, split_queries  # noqa: E402
from fusionrank.metrics import evaluate  # noqa: E402
from fusionrank.modeldir import ModelDir  # noqa: E402
from fusionrank.ranking import CatalogConfig, CatalogTables, QueryEncoder, VectorConfig  # noqa: E402
from fusionrank.report import markdown_table  # noqa: E402
from fusionrank.settings import get_settings  # noqa: E402

from fashion44k_rankers import bm25_scores, full_run, minmax  # noqa: E402

WORDS = ROOT / "benchmarks" / "data" / "generalisation_words.toml"
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ("title", "title_sparse")
# catalogue colour values besides the keys of [colours] (for parsing only)
MORE_COLOURS = ["off white", "cream", "olive", "khaki", "teal", "magenta", "lavender", "peach", "tan", "copper", "bronze",
                "steel", "mustard", "rust", "turquoise blue", "sea green", "lime green", "charcoal", "multi", "skin", "nude",
                "mauve", "taupe", "coffee brown", "grey melange", "burgundy", "fluorescent green", "metallic",
                "mushroom brown", "rose", "golden", "navy"]
GENDER_BASE = {"men": "men", "mens": "men", "men's": "men", "women": "women", "womens": "women", "women's": "women",
               "boys": "boys", "boy's": "boys", "boys'": "boys", "girls": "girls", "girl's": "girls", "girls'": "girls"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_words(path: Path = WORDS) -> dict[str, list[tuple[list[str], list[str]]]]:
    doc = tomllib.loads(path.read_text())
    return {kind: [(k.split("|"), v) for k, v in doc[kind].items()] for kind in ("types", "colours", "genders")}


def _find(query: str, forms) -> tuple[int, int, str] | None:
    """The longest of ``forms`` occurring in ``query`` as whole words: ``(start, end, form)``."""
    best = None
    for f in sorted(forms, key=len, reverse=True):
        m = re.search(rf"(?<![\w']){re.escape(f)}(?![\w'])", query)
        if m and (best is None or len(f) > len(best[2])):
            best = (m.start(), m.end(), f)
    return best


def _pick(options: list[str], key: str) -> str:
    return options[zlib.crc32(key.encode()) % len(options)]


def synonym_queries(dev: pd.DataFrame, words, seen: set[str]) -> pd.DataFrame:
    """One type, colour or gender word per dev query replaced by an unseen synonym (kinds rotate by query)."""
    rows = []
    kinds = ("types", "colours", "genders")
    for i, (qid, q) in enumerate(zip(dev[S.QUERY_ID], dev[S.QUERY])):
        q = q.lower()
        for kind in kinds[i % 3:] + kinds[:i % 3]:
            hit = None
            for forms, syns in words[kind]:
                ok = [s for s in syns if not (set(tokenize(s)) & seen)]
                f = _find(q, forms)
                if f and ok and (hit is None or len(f[2]) > len(hit[0][2])):
                    hit = (f, ok)
            if hit is None:
                continue
            (a, b, form), ok = hit
            syn = _pick(ok, qid)
            rows.append({S.QUERY_ID: qid, S.QUERY: q[:a] + syn + q[b:], "original": q, "replaced": f"{form} -> {syn}",
                         "kind": kind[:-1]})
            break
    return pd.DataFrame(rows)


def parse(query: str, words) -> dict[str, str]:
    """``{colour, gender, type, rest}`` of a dev query (its forms: colour/gender/brand/usage before the type)."""
    q = query.lower()
    out = {}
    g = re.search(r"\bfor (men|women|boys|girls)\b", q)
    if g:
        out["gender"] = g.group(1)
        q = (q[:g.start()] + q[g.end():]).strip()
    else:
        f = _find(q, list(GENDER_BASE))
        if f:
            out["gender"] = GENDER_BASE[f[2]]
            q = (q[:f[0]] + q[f[1]:]).strip()
    colours = [x for forms, _ in words["colours"] for x in forms] + MORE_COLOURS
    f = _find(q, colours)
    if f:
        out["colour"] = f[2]
        q = (q[:f[0]] + q[f[1]:]).strip()
    types = [x for forms, _ in words["types"] for x in forms]
    toks = q.split()
    f = _find(q, types)
    if f and q.endswith(f[2]):
        out["type"] = f[2]
        q = q[:f[0]].strip()
    elif toks:
        out["type"] = toks[-1]
        q = " ".join(toks[:-1])
    out["rest"] = " ".join(q.split())
    return out


TEMPLATES = (  # none of these shapes occurs among the training queries (type last, colour before it)
    lambda p: [p.get("rest"), p["type"], p.get("colour") and f"in {p['colour']}", p.get("gender") and f"for {p['gender']}"],
    lambda p: [p["type"], p.get("rest"), p.get("colour"), p.get("gender")],
    lambda p: ["show me", p.get("gender") and f"{p['gender']}'s", p.get("rest"), p["type"], p.get("colour") and f"in {p['colour']}"],
    lambda p: [p.get("colour") and f"{p['colour']} coloured", p.get("rest"), p["type"], p.get("gender") and f"for {p['gender']}"],
    lambda p: [p.get("rest"), p["type"], p.get("gender") and f"for {p['gender']}", p.get("colour") and f"with {p['colour']} colour"],
    lambda p: [p["type"], p.get("gender") and f"for {p['gender']}", p.get("colour") and f"in {p['colour']}",
               p.get("rest") and f"by {p['rest']}"],
)


def rephrased_queries(dev: pd.DataFrame, words, train_queries: set[str]) -> pd.DataFrame:
    rows = []
    for i, (qid, q) in enumerate(zip(dev[S.QUERY_ID], dev[S.QUERY])):
        p = parse(q, words)
        for j in range(len(TEMPLATES)):
            t = TEMPLATES[(i + j) % len(TEMPLATES)]
            r = " ".join(x for x in t(p) if x)
            if r != q.lower() and r not in train_queries:
                rows.append({S.QUERY_ID: qid, S.QUERY: r, "original": q, "template": (i + j) % len(TEMPLATES)})
                break
    return pd.DataFrame(rows)


def machine_load() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="[LABEL=]DIR, repeatable (default: the shipped model's usual directory)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--limit", type=int, default=0, help="first N dev queries only (a quick look)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    load_before = machine_load()
    specs = args.model or [str(get_settings().models_dir / "fashion44k-full")]
    models = {}
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        m = ModelDir.open(Path(path).expanduser())
        models[label or m.path.name] = m
    md = next(iter(models.values()))
    cfg = md.config()
    ws = md.workspace()
    cat = Catalog.load(Path(ws.catalog))
    train_q = split_frame(cat, "train")
    dev = split_frame(cat, "dev")
    if args.limit:
        dev = dev.head(args.limit)
    qrels = cat.qrels
    seen = {t for q in pd.concat([train_q, split_frame(cat, "dev")])[S.QUERY] for t in tokenize(q)}
    words = load_words()
    parts = {"train-like": dev[[S.QUERY_ID, S.QUERY]],
             "new phrasing": rephrased_queries(dev, words, set(train_q[S.QUERY].str.lower())),
             "synonyms": synonym_queries(dev, words, seen)}
    for name, p in parts.items():
        log(f"{name}: {len(p)} queries, e.g. " + "; ".join(p[S.QUERY].head(4)))
    new_words = sorted({t for q in parts["new phrasing"][S.QUERY] for t in tokenize(q)} - seen)
    log(f"connecting words of the new phrasings that no train/dev query uses: {new_words}")

    for m in models.values():
        if m.understanding() is None:
            raise SystemExit(f"{m.path} has no query understanding; build it with `fusionrank understand {m.path} --rebuild`")
    # the hybrid's weight is tuned on the model's held-out training queries (at least 10% of them)
    vf = max(cfg.data.valid_fraction, 0.1)
    sp = split_queries(train_q, {"train": 1 - vf, "valid": vf}, seed=cfg.seed)
    vq = train_q[sp == "valid"]
    qenc = QueryEncoder(text_encoder=cfg.text_encoder_spec, cache_size=20000)
    henc = QueryEncoder(cache_size=20000)  # the hybrid's: plain MiniLM
    prefix = (lambda label: f"{label}: ") if len(models) > 1 else (lambda label: "")
    rows, examples = [], {}
    for tf in FIELDS:
        t0 = time.perf_counter()
        model_tabs, built = {}, {}
        for label, m in models.items():  # models over the same store, encoder and candidate settings share tables
            mc = m.config()
            key = json.dumps([str(m.workspace().store), mc.text_encoder_spec, mc.catalog_config(tf).model_dump()],
                             sort_keys=True, default=str)
            if key not in built:
                built[key] = m.catalog_tables(tf, log=lambda x: None)
            model_tabs[label] = built[key]
        # the hybrid's own tables: plain MiniLM title vectors and BM25 over the titles as they are, whatever text
        # encoder (an adapter trained on the judgments) or title expansion (the photo colour) the models use
        tabs = CatalogTables.from_store(cat.products, ws.store, CatalogConfig(
            title_field=tf, candidates=cfg.candidates, bm25=cfg.bm25, ann=VectorConfig(codec="exact")),
            "minilm", cfg.transcriber_name, log=lambda x: None)
        log(f"{tf}: catalogue tables ({len(built)} + the hybrid's) in {time.perf_counter() - t0:.0f} s")
        # the hybrid: weight tuned on held-out training queries
        vqs = vq[S.QUERY].tolist()
        vbm, vde = minmax(bm25_scores(tabs, "title", vqs)), minmax(henc.encode_many(vqs) @ tabs.emb["title"][:tabs.n_rows].T)
        vqr = qrels[qrels[S.QUERY_ID].isin(set(vq[S.QUERY_ID]))]
        grid = np.round(np.arange(0.0, 1.01, 0.1), 2)
        w = max(grid, key=lambda w: evaluate(vqr, full_run(tabs.ids, vq[S.QUERY_ID].tolist(), w * vbm + (1 - w) * vde, 100),
                                            ["ndcg@10"]).mean["ndcg@10"])
        for part, pq in parts.items():
            qs, qids = pq[S.QUERY].tolist(), pq[S.QUERY_ID].tolist()
            pqr = qrels[qrels[S.QUERY_ID].isin(set(qids))]
            h = w * minmax(bm25_scores(tabs, "title", qs)) + (1 - w) * minmax(henc.encode_many(qs) @ tabs.emb["title"][:tabs.n_rows].T)
            r = evaluate(pqr, full_run(tabs.ids, qids, h), ["ndcg@10"])
            rows.append({"field": tf, "part": part, "system": f"hybrid BM25+MiniLM (w={w})", "ndcg@10": r.mean["ndcg@10"]})
            for label, m in models.items():
                mcfg, und = m.config(), m.understanding()
                menc = qenc if mcfg.text_encoder_spec == cfg.text_encoder_spec else QueryEncoder(
                    text_encoder=mcfg.text_encoder_spec, cache_size=20000)
                mtabs = model_tabs[label]
                ranker = m.load_ranker()
                systems = {"model, queries as typed": None, "model + query understanding": und.components}
                if args.ablations:
                    for c in und.components:
                        systems[f"  without {c}"] = tuple(x for x in und.components if x != c)
                for sysname, comps in systems.items():
                    t1 = time.perf_counter()
                    pipe = m.pipeline(mtabs, ranker, menc, understanding=comps is not None)
                    if comps is not None:
                        pipe.understanding.components = comps
                    res = evaluate_pipeline(pipe, pq[[S.QUERY_ID, S.QUERY]], pqr, ("ndcg@10",))
                    changed = sum(pipe.understanding.understand(q).changed for q in qs)
                    name = prefix(label) + sysname
                    rows.append({"field": tf, "part": part, "system": name, "ndcg@10": res["mean"]["ndcg@10"],
                                 "queries rewritten": changed})
                    log(f"{tf} / {part} / {name}: {res['mean']['ndcg@10']:.4f} ({changed} rewritten, "
                        f"{time.perf_counter() - t1:.0f} s)")
                    if comps == und.components and tf == "title" and m is md:
                        examples[part] = [pipe.understanding.understand(q) for q in qs]
    table = pd.DataFrame(rows)
    write(args, table, parts, examples, new_words, load_before, time.perf_counter() - t_all, models)


def write(args, table: pd.DataFrame, parts, examples, new_words, load_before, seconds, models) -> None:
    hyb = table[table.system.str.startswith("hybrid")].set_index(["field", "part"])["ndcg@10"]
    table["gain over hybrid"] = [r["ndcg@10"] - hyb[(r["field"], r["part"])] for _, r in table.iterrows()]
    args.out.mkdir(parents=True, exist_ok=True)
    def wide(col):
        t = table.pivot_table(index="system", columns=["field", "part"], values=col, sort=False)
        t.columns = [f"{f} / {p}" for f, p in t.columns]
        return t.reset_index()

    piv, gain = wide("ndcg@10"), wide("gain over hybrid")
    lines = ["# Generalisation check: dev queries in words and phrasings no training query used", "",
             "Models: " + "; ".join(f"`{label}` = `{m.path}` (config `{m.config().name}`)" for label, m in models.items())
             + "; command: `.venv/bin/python benchmarks/generalisation.py "
             + " ".join(f"--model {spec}" for spec in (args.model or [])) + ("" if args.ablations else " --no-ablations")
             + (f" --limit {args.limit}" if args.limit else "")
             + "`. "
             f"NDCG@10 over the full catalogue, dev grades; {seconds:.0f} s. Machine before: {load_before}; after: {machine_load()} "
             "(other jobs of the session were running: see the commit message).", "",
             "| part | queries | what changed |", "|---|---:|---|",
             f"| train-like | {len(parts['train-like'])} | nothing: the dev queries |",
             f"| new phrasing | {len(parts['new phrasing'])} | template: type first, colour after the type, "
             f"connecting words no train/dev query uses: {', '.join(new_words)} |",
             f"| synonyms | {len(parts['synonyms'])} | one word replaced from `benchmarks/data/generalisation_words.toml` "
             f"({parts['synonyms']['kind'].value_counts().to_dict()}) |", "",
             "## NDCG@10", "", markdown_table(piv), "",
             "## Gain over the hybrid", "", markdown_table(gain, "+.4f"), "",
             "## Examples (title field, with query understanding)", ""]
    for part, us in examples.items():
        ch = [u for u in us if u.changed][:12]
        lines += [f"**{part}** ({sum(u.changed for u in us)} of {len(us)} rewritten):", ""]
        lines += [f"- `{u.text}` -> `{u.rewritten}`" + (f": {'; '.join(str(m) for m in u.mappings)}" if u.mappings else "")
                  + (f" (ignored: {', '.join(u.dropped)})" if u.dropped else "") for u in ch]
        lines.append("")
    sy = parts["synonyms"]
    lines += ["## Synonym replacements used", "", ", ".join(sorted(set(sy["replaced"]))), ""]
    (args.out / "generalisation.md").write_text("\n".join(lines))
    (args.out / "generalisation.json").write_text(json.dumps({"rows": table.to_dict("records"),
                                                              "parts": {k: v.to_dict("records") for k, v in parts.items()}},
                                                             indent=1, default=str))
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
