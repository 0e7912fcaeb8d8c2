"""The ``fusionrank`` command line."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import FusionrankError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multimodal learning-to-rank for product search.")
console = Console(stderr=True)



def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


def print_ingest_report(rep: dict) -> None:
    t = Table(title=f"ingest: {rep.get('source')} ({rep.get('adapter')}, {rep.get('seconds')} s)")
    for c in ("table", "read", "kept", "fixed", "rejected", "merged", "skipped", "media dropped"):
        t.add_column(c, justify="right" if c != "table" else "left")
    for name in ("products", "queries", "qrels"):
        r = rep.get(name, {})
        t.add_row(name, *(f"{r.get(k, 0):,}" for k in ("read", "kept", "fixed", "rejected", "merged_duplicates", "skipped", "media_dropped")))
    console.print(t)
    for name in ("products", "queries", "qrels"):
        r = rep.get(name, {})
        for k in ("reject_reasons", "media_reasons", "skip_reasons"):
            for reason, n in list(r.get(k, {}).items())[:8]:
                console.print(f"  {name} {k.split('_')[0]}: {reason}: {n:,}")
    for name in ("products", "queries", "qrels"):
        n = rep.get(name, {}).get("utf8_replaced_rows", 0)
        if n:
            console.print(f"  {name}: {n:,} row(s) read with invalid UTF-8 replaced by U+FFFD (listed in the rejects, kind encoding)")
    console.print(f"  rejects written to {rep.get('rejects_file')}")


def print_encode_summary(s: dict) -> None:
    t = Table(title=f"encode: {s['products']:,} products in {s['seconds']} s ({s['engine']} engine) -> {s['store']}")
    for c in ("feature", "modality", "present", "cached", "encoded", "failed", "seconds", "items/s"):
        t.add_column(c, justify="left" if c in ("feature", "modality") else "right")
    for j in s["jobs"]:
        t.add_row(j["feature"], j["modality"], f"{j['present']:,}", f"{j['cached']:,}", f"{j['encoded']:,}", f"{j['failed']:,}",
                  f"{j['seconds']:.1f}", f"{j['items_per_second']:.1f}")
    console.print(t)
    if s.get("failures"):
        console.print(f"  {s['failures']} item(s) failed; see {s.get('failures_file')}")


def _list_adapter_options(value: Optional[str]) -> None:
    """``--list-options ADAPTER`` (or ``all``): print the options as Markdown tables and exit."""
    if value is None:
        return
    from .ingest.adapters import ADAPTERS, options_markdown

    if value != "all" and value not in ADAPTERS:
        _fail(FusionrankError(f"unknown dataset adapter {value!r}; valid names: {', '.join(ADAPTERS.names())}, or all"))
    print(options_markdown(ADAPTERS.names() if value == "all" else [value]), end="")
    raise typer.Exit()


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="dataset folder or products file"),
    out: Path = typer.Option(..., "--out", "-o", help="catalogue directory to write"),
    adapter: str = typer.Option("native", help="dataset adapter: native, fashion44k, esci, wands"),
    option: list[str] = typer.Option([], "--option", metavar="KEY=VALUE",
                                     help="an adapter option (repeatable), e.g. --option locale=us; values are read as JSON "
                                          "when that fits the option (5, true, null, '[\"us\",\"es\"]'), else as text"),
    list_options: Optional[str] = typer.Option(None, "--list-options", metavar="ADAPTER", is_eager=True,
                                               callback=_list_adapter_options,
                                               help="print the options of ADAPTER (or 'all') and exit"),
    limit: Optional[int] = typer.Option(None, help="ingest only the first N products (judgments of others are counted as skipped)"),
    check_media: bool = typer.Option(True, help="decode every photo and audio clip"),
    on_bad_media: str = typer.Option("drop_field", help="drop_field (keep the product without that modality) or reject_row"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
):
    """Read, validate and clean a catalogue into OUT (products, queries, qrels, rejects, report)."""
    from .ingest import ingest as run_ingest
    from .ingest.adapters import parse_option_strings

    opts = {"limit": limit} if limit is not None else {}
    try:
        args = parse_option_strings(adapter, option)
        cat = run_ingest(source, out, adapter=adapter, adapter_args=args, check_media=check_media, on_bad_media=on_bad_media,
                         progress=True, **opts)
    except FusionrankError as e:
        _fail(e)
    except OSError as e:  # e.g. OUT cannot be created or written: a clear error, not a traceback
        _fail(FusionrankError(f"cannot write the catalogue to {out}: {e.strerror or e}"))
    if json_out:
        print(json.dumps(cat.report, indent=2))
    else:
        print_ingest_report(cat.report)


def _encode_settings(config: Optional[Path]):
    """What ``fusionrank encode --config`` encodes: an ``[encode]`` table as given, or what an experiment config's model needs."""
    from .config import load_config
    from .encode import EncodeSettings
    from .experiment import ExperimentConfig

    if config is None:
        return EncodeSettings()
    raw = load_config(config)
    return EncodeSettings.from_dict(raw["encode"]) if "encode" in raw else ExperimentConfig.load(config).encode_settings()


@app.command()
def encode(
    catalog: Path = typer.Argument(..., help="catalogue directory written by `fusionrank ingest`"),
    store: Path = typer.Option(..., "--store", "-s", help="embedding store directory"),
    engine: str = typer.Option("local", help="local (in-process) or ray"),
    ray_address: Optional[str] = typer.Option(None, help="address of an existing Ray cluster (default: start a local one)"),
    modalities: str = typer.Option("text,image,audio", help="comma-separated modalities to encode"),
    config: Optional[Path] = typer.Option(None, help="an experiment config (its encoders and title fields), or a TOML/YAML file with an [encode] table of EncodeSettings"),
    limit: Optional[int] = typer.Option(None, help="encode only the first N products"),
    processes: int = typer.Option(1, help="local engine: worker processes (e.g. 2 for speech-to-text on 2 cores)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
):
    """Encode every modality into the embedding store; only new or changed products are encoded."""
    from .encode import encode_catalog
    from .ingest import Catalog

    try:
        cat = Catalog.load(catalog)
        products = cat.products if limit is None else cat.products.iloc[:limit]
        settings = _encode_settings(config)
        eng_args = {"address": ray_address} if engine == "ray" else {"processes": processes}
        summary = encode_catalog(products, store, settings, engine=engine, engine_args=eng_args,
                                 modalities=[m.strip() for m in modalities.split(",") if m.strip()], log=lambda m: console.print(f"  {m}"))
    except FusionrankError as e:
        _fail(e)
    if json_out:
        print(json.dumps(summary, indent=2))
    else:
        print_encode_summary(summary)


@app.command()
def demo(
    config: Path = typer.Option(Path(__file__).resolve().parents[2] / "configs" / "demo.toml", help="experiment config of the main job"),
    data: Optional[Path] = typer.Option(None, help="the fashion44k folder (default: the config's source, ../shared/data/fashion44k)"),
    limit: Optional[int] = typer.Option(None, help="products to use (default: the config's 6,000; 0 = all 44k)"),
    out: Optional[Path] = typer.Option(None, help="model directory to write (default: $FUSIONRANK_HOME/models/demo)"),
    query: str = typer.Option("black watch for men", help="query for the closing example search"),
    serve_after: bool = typer.Option(True, "--serve/--no-serve", help="end by serving the model over HTTP"),
    port: int = typer.Option(8000, help="port of the search service"),
):
    """The main job on the embedded default: ingest + encode fashion44k, train a fusion ranker, evaluate, search, serve."""
    from .experiment import ExperimentConfig
    from .experiment import train as run_train
    from .modeldir import ModelDir

    from .settings import get_settings

    t0 = time.perf_counter()
    out = out or get_settings().models_dir / "demo"
    try:
        cfg = ExperimentConfig.load(config)
        if data is not None:
            cfg.data.source = str(data)
        if limit is not None:
            cfg.data.limit = None if limit == 0 else limit
        console.rule("[bold]ingest + encode + train")
        m = run_train(cfg, out, config_path=config.resolve(), log=lambda s: console.print(s))
        ws = ModelDir.open(out).workspace()
        rep = json.loads((Path(ws.catalog) / "report.json").read_text())
        print_ingest_report(rep)
        summ = json.loads((Path(ws.store) / "encode_summary.json").read_text())
        print_encode_summary(summ)
        t = Table(title=f"dev queries on the {cfg.data.limit or 'full'}-product catalogue")
        for c in ("variant", "ndcg@10", "map", "mrr", "recall@100"):
            t.add_column(c)
        for k, v in m.items():
            if isinstance(v, dict) and "ndcg@10" in v:
                t.add_row(k, *(f"{v[x]:.4f}" for x in ("ndcg@10", "map", "mrr", "recall@100")))
        console.print(t)
        console.print(f"modality weights: {m.get('alpha')}")
        console.rule("[bold]search")
        print_hits(query, _search(out, query, 5, None, None))
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s; model in {out}")
    if serve_after:
        console.rule("[bold]serve")
        _serve(out, "127.0.0.1", port, None, False, None, None, None, 1)


@app.command("compact-index")
def compact_index(
    index: Path = typer.Argument(..., help="a search index folder (e.g. MODEL/index); the service must be stopped"),
):
    """Rewrite a search index without the rows of removed and replaced products (offline; a full build)."""
    from .serving import SearchIndex

    try:
        idx = SearchIndex.load(index, log=lambda s: console.print(s))
        before = idx.n_rows
        new = idx.compacted(log=lambda s: console.print(s))
        new.save(index)
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]compacted[/] {index}: {before:,} rows -> {new.n_rows:,} ({len(new):,} products)")


@app.command("shard-index")
def shard_index(
    index: Path = typer.Argument(..., help="a search index folder (e.g. MODEL/index); the service must be stopped"),
    shards: int = typer.Option(..., "--shards", "-k", min=1, help="how many shards"),
    out: Optional[Path] = typer.Option(None, help="where to write them (default: beside the index, INDEX-shardsK, "
                                       "where `fusionrank serve MODEL --shards K` looks)"),
):
    """Split a search index into K shards for `fusionrank serve MODEL --shards K` (offline; each shard a saved index
    holding part of the catalogue, with the whole index's term ids and trained IVF)."""
    from .serving import SearchIndex
    from .serving.shards import build_shards, shards_folder

    try:
        idx = SearchIndex.load(index, log=lambda s: console.print(s))
        d = build_shards(idx, shards, out or shards_folder(index, shards), source=index, log=lambda s: console.print(s))
        idx.close()
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]sharded[/] {index} -> {d}")


@app.command()
def serve(
    model: Path = typer.Argument(..., help="model directory (from `fusionrank train` or `fusionrank demo`)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8000, help="port"),
    index: Optional[Path] = typer.Option(None, help="search index folder (default: MODEL/index, written by `fusionrank train` or `fusionrank index`)"),
    rebuild: bool = typer.Option(False, help="rebuild the index from the catalogue and embedding store first"),
    catalog: Optional[Path] = typer.Option(None, help="serve this catalogue instead of the one the model was trained on"),
    admin_key: Optional[str] = typer.Option(None, help="key for PUT/DELETE/admin (default: $FUSIONRANK_ADMIN_KEY, else generated)"),
    events_key: Optional[str] = typer.Option(None, help="key the web page uses for POST /events (default: $FUSIONRANK_EVENTS_KEY, else generated)"),
    threads: int = typer.Option(1, help="torch threads per request (requests run concurrently)"),
    randomise_share: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="share of searches whose top result is swapped "
                                                    "with a random one of the page, to estimate position bias "
                                                    "(default: $FUSIONRANK_RANDOMISE_SHARE, 0)"),
    explore_share: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="share of searches that show, at --explore-count "
                                                  "random positions, candidates ranked below the page, so retraining sees "
                                                  "clicks on them (default: $FUSIONRANK_EXPLORE_SHARE, 0)"),
    explore_depth: Optional[int] = typer.Option(None, min=2, help="deepest rank an explored search draws from "
                                                "(default: $FUSIONRANK_EXPLORE_DEPTH, 50)"),
    explore_count: Optional[int] = typer.Option(None, min=1, help="positions of an explored search that show a candidate "
                                                "ranked below the page (default: $FUSIONRANK_EXPLORE_COUNT, 1)"),
    feature_logging: bool = typer.Option(True, help="log the features the ranker scored with every search (training from clicks needs them)"),
    registry: Optional[Path] = typer.Option(None, help="a model registry: rank with its promoted version, follow promotions "
                                            "and interleave its interleaving versions (MODEL still gives the index)"),
    poll: float = typer.Option(1.0, min=0.05, help="with --registry: seconds between checks of the registry index"),
    workers: int = typer.Option(1, min=1, help="worker processes sharing one memory-mapped index snapshot and one port; "
                                "writes go through the index's change log, model swaps reach every worker"),
    start_method: Optional[str] = typer.Option(None, help="with --workers: fork (load once, then fork the workers: "
                                               "they share the loaded pages; default on Linux) or spawn (each worker "
                                               "a new process that loads everything itself)"),
    engine: str = typer.Option("local", help="local: uvicorn in this process (or --workers processes); ray: a Ray Serve "
                               "application of --replicas replicas"),
    replicas: int = typer.Option(1, min=1, help="with --engine ray: replicas, each a whole service over the shared index "
                                 "folder (writes and model swaps reach every replica, as with --workers)"),
    ray_address: Optional[str] = typer.Option(None, help="with --engine ray or --shards: the Ray cluster to join (default: "
                                              "start a local Ray runtime); its nodes must see the index folder"),
    shards: Optional[int] = typer.Option(None, min=1, help="serve the index split into K shards, each a Ray actor holding "
                                         "part of the catalogue; a router in this process merges their candidates "
                                         "before the re-rank (split beside the index the first time, or with --rebuild)"),
    shard_engine: str = typer.Option("ray", help="with --shards: where the shards run: ray (one actor each) or local "
                                     "(in this process)"),
    search_concurrency: Optional[int] = typer.Option(None, min=1, help="searches one serving process ranks at once, the "
                                                     "rest queueing (default: $FUSIONRANK_SEARCH_CONCURRENCY, else 2 "
                                                     "for one process and 1 per worker or replica)"),
):
    """Serve MODEL over HTTP: search API, product admin, events, metrics and the search page.

    Searches and shoppers' events go to the event store ($FUSIONRANK_EVENTS_URL, default MODEL/service-data/events.sqlite)."""
    if engine not in SERVE_ENGINES:
        _fail(FusionrankError(f"unknown serve engine {engine!r}; valid: {', '.join(SERVE_ENGINES)}"))
    # every engine's services read these settings (workers and Ray replicas inherit the variables)
    for name, value in (("FUSIONRANK_EXPLORE_SHARE", explore_share), ("FUSIONRANK_EXPLORE_DEPTH", explore_depth),
                        ("FUSIONRANK_EXPLORE_COUNT", explore_count), ("FUSIONRANK_SEARCH_CONCURRENCY", search_concurrency)):
        if value is not None:
            os.environ[name] = str(value)
    if shards is not None and (engine == "ray" or workers > 1):
        _fail(FusionrankError("--shards is served by one process whose router orders the writes: it does not go with "
                              "--workers or --engine ray (the shards themselves run on Ray: --shard-engine ray)"))
    if engine == "ray":
        if workers > 1 or catalog is not None:
            _fail(FusionrankError("--engine ray takes --replicas (not --workers) and serves the model's saved index "
                                  "(build it for another catalogue with `fusionrank serve MODEL --catalog CATALOG` first)"))
        _serve_ray(model, host, port, index, rebuild, admin_key, events_key, threads, randomise_share, feature_logging,
                   registry, poll, replicas, ray_address)
        return
    if replicas > 1 or (ray_address and shards is None):
        _fail(FusionrankError("--replicas and --ray-address go with --engine ray (--ray-address also with --shards); "
                              "for processes on this machine use --workers"))
    if start_method is not None and workers == 1:
        _fail(FusionrankError("--start-method goes with --workers 2 or more (one process loads and serves by itself)"))
    if workers > 1:
        _serve_workers(model, host, port, index, rebuild, catalog, admin_key, events_key, threads, randomise_share,
                       feature_logging, registry, poll, workers, start_method)
        return
    _serve(model, host, port, index, rebuild, catalog, admin_key, events_key, threads, randomise_share, feature_logging,
           registry, poll, shards, shard_engine, ray_address)


SERVE_ENGINES = ("local", "ray")


def _serve_ray(model, host, port, index, rebuild, admin_key, events_key, threads, randomise_share, feature_logging,
               registry, poll, replicas, ray_address) -> None:
    from .settings import get_settings

    settings = get_settings()
    admin_key = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    events_key = events_key or (settings.events_key.get_secret_value() if settings.events_key else None)
    try:
        from .serving.rayserve import serve_ray
    except ImportError as e:
        _fail(FusionrankError(f"--engine ray needs Ray Serve ({e}); install it with: pip install 'fusionrank[ray]'"))
    try:
        if rebuild:
            from .modeldir import ModelDir

            ModelDir.open(model).build_index(index_dir=index, log=lambda s: console.print(s)).close()
        if admin_key is None:
            import secrets

            admin_key = secrets.token_urlsafe(24)
            console.print(f"admin API key (X-API-Key, generated for this run; set FUSIONRANK_ADMIN_KEY to fix it): {admin_key}")

        def ready(url: str) -> None:
            console.print(f"[bold green]search page and API:[/] {url}   (Ray Serve, {replicas} replica(s); "
                          f"OpenAPI {url}openapi.json; Ctrl-C stops)")
            print(url, flush=True)

        code = serve_ray(model, replicas, ray_address, host, port, index, admin_key, events_key, threads, randomise_share,
                         feature_logging, registry, poll, on_ready=ready, log=lambda s: console.print(s))
    except FusionrankError as e:
        _fail(e)
    raise typer.Exit(code)


def _build_index_job(model: str, index) -> None:
    from .modeldir import ModelDir

    ModelDir.open(model).build_index(index_dir=index, log=lambda s: console.print(s)).close()


def _serve_workers(model, host, port, index, rebuild, catalog, admin_key, events_key, threads, randomise_share,
                   feature_logging, registry, poll, workers, start_method=None) -> None:
    from .serving.workers import serve_workers
    from .settings import get_settings

    settings = get_settings()
    if catalog is not None:
        _fail(FusionrankError("--workers serves the model's saved index; build it for another catalogue with "
                              "`fusionrank serve MODEL --catalog CATALOG` once (one process), then start the workers"))
    given_admin = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    events_key = events_key or (settings.events_key.get_secret_value() if settings.events_key else None)
    try:
        if rebuild:  # in a process of its own: the threads a build leaves (OpenMP, Arrow) must not be in a supervisor that forks
            import multiprocessing

            job = multiprocessing.get_context("spawn").Process(target=_build_index_job, args=(str(model), index))
            job.start()
            job.join()
            if job.exitcode != 0:
                _fail(FusionrankError(f"building the search index failed (exit code {job.exitcode}; its messages are above)"))
        if given_admin is None:
            import secrets

            given_admin = secrets.token_urlsafe(24)
            console.print(f"admin API key (X-API-Key, generated for this run; set FUSIONRANK_ADMIN_KEY to fix it): {given_admin}")

        def ready(url: str) -> None:
            console.print(f"[bold green]search page and API:[/] {url}   ({workers} workers; OpenAPI {url}openapi.json; Ctrl-C stops)")
            sys.stdout.write(url + "\n")  # one write: the workers share this stdout (unbuffered, print writes twice)
            sys.stdout.flush()

        code = serve_workers(model, workers, host, port, index, given_admin, events_key, threads, randomise_share,
                             feature_logging, registry, poll, on_ready=ready, log=lambda s: console.print(s),
                             start_method=start_method)
    except FusionrankError as e:
        _fail(e)
    raise typer.Exit(code)


def _serve(model, host, port, index, rebuild, catalog, admin_key, events_key, threads, randomise_share=None,
           feature_logging=True, registry=None, poll=1.0, shards=None, shard_engine="ray", ray_address=None) -> None:
    import secrets

    import torch

    from .serving.app import serve as run_server
    from .serving.build import open_service
    from .serving.http.app import bind

    from .settings import get_settings

    torch.set_num_threads(threads)
    settings = get_settings()
    admin_key = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    events_key = events_key or (settings.events_key.get_secret_value() if settings.events_key else None)
    try:  # fail before loading anything if the port is taken; held (refusing connections) until the service listens
        sock = bind(host, port)
    except FusionrankError as e:
        _fail(e)
    try:
        svc = open_service(model, index, rebuild=rebuild, catalog=catalog, randomise_share=randomise_share,
                           feature_logging=feature_logging, registry=registry, shards=shards, shard_engine=shard_engine,
                           ray_address=ray_address, log=lambda s: console.print(s))
        if registry is not None:
            from .models import ModelRegistry
            from .serving.follow import RegistryFollower

            RegistryFollower(svc, ModelRegistry.open(registry), poll, log=lambda s: console.print(s)).start()
    except FusionrankError as e:
        _fail(e)
    if admin_key is None:
        admin_key = secrets.token_urlsafe(24)
        console.print(f"admin API key (X-API-Key, generated for this run; set FUSIONRANK_ADMIN_KEY to fix it): {admin_key}")

    def ready(url: str) -> None:  # the socket listens: a client reading the address is served, not refused
        console.print(f"[bold green]search page and API:[/] {url}   (OpenAPI {url}openapi.json, metrics {url}metrics; Ctrl-C stops)")
        print(url, flush=True)

    run_server(svc, host, port, admin_key, events_key, log=lambda s: console.print(s), on_ready=ready, sock=sock)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="experiment config (TOML or YAML)"),
    out: Path = typer.Option(..., "--out", "-o", help="model directory to write"),
    engine: Optional[str] = typer.Option(None, "--engine", help="where the ranker trains: local (this process) or ray "
                                         "(Ray Train, data-parallel over queries; checkpoints in OUT/ray_train); "
                                         "default: the config's [training] engine, else local"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="training processes (default: the config's, "
                                          "else 1 with local, 2 with ray)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="an existing Ray cluster for --engine ray "
                                              "(default: a local Ray runtime for the run)"),
):
    """Train a ranker from an experiment config; writes weights, config, alpha_k and metrics to OUT."""
    from .experiment import ExperimentConfig, train as run_train

    try:
        cfg = ExperimentConfig.load(config)
        where = cfg.training.training_engine(engine, workers, ray_address)
        m = run_train(cfg, out, config_path=config.resolve(), log=lambda s: console.print(s), engine=where)
    except FusionrankError as e:
        _fail(e)
    console.print_json(json.dumps(m, default=str))
    console.print(f"[bold green]model written to[/] {out}")


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="model directory written by `fusionrank train`"),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="a prepared catalogue: an ingested catalogue dir or a source already ingested and encoded"),
    queries: Path = typer.Option(..., "--queries", help="TSV with query_id, query (plain or .gz)"),
    qrels: Path = typer.Option(..., "--qrels", help="TSV with query_id, product_id, grade (plain or .gz)"),
    title_field: Optional[str] = typer.Option(None, "--title-field", help="title or title_sparse (default: the model's)"),
    index: bool = typer.Option(False, "--index", help="rank through the saved serving index (its vector search) instead of exact search"),
    metrics: str = typer.Option("ndcg@10,map,mrr,recall@100", help="comma-separated metrics"),
    per_query: Optional[Path] = typer.Option(None, help="write per-query scores to this TSV"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
):
    """Rank the full catalogue for every query through retrieve-then-rerank and report metrics."""
    from .experiment import evaluate_pipeline
    from .ingest import read_catalog_qrels, read_catalog_queries
    from .modeldir import ModelDir

    try:
        t0 = time.perf_counter()
        q = read_catalog_queries(queries)
        qr = read_catalog_qrels(qrels)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result only (libraries print while loading)
            md = ModelDir.open(model)
            if index:
                if catalog is not None or title_field not in (None, md.config().data.title_field):
                    raise FusionrankError("--index ranks the model's own catalogue and title field; drop --catalog/--title-field")
                tables = md.open_index(log=lambda s: console.print(s))
            else:
                tables = md.catalog_tables(title_field, catalog, log=lambda s: console.print(s))
            res = evaluate_pipeline(md.pipeline(tables), q, qr, [m.strip() for m in metrics.split(",") if m.strip()])
    except FusionrankError as e:
        _fail(e)
    out = {**res["mean"], "queries": res["queries"], "title_field": tables.config.title_field,
           "vectors": tables.config.ann.codec if index else "exact", "model": str(model),
           "seconds": round(time.perf_counter() - t0, 1)}
    if per_query:
        res["per_query"].to_csv(per_query, sep="\t")
    if json_out:
        print(json.dumps(out))
    else:
        t = Table(title=f"evaluation of {model} ({out['queries']} queries, {out['title_field']})")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in res["mean"].items():
            t.add_row(k, f"{v:.4f}")
        console.print(t)


def _search(model: Path, query: str, k: int, category: Optional[str], title_field: Optional[str]):
    """One search through the ranking path over the model's saved index (or, for another title field, its catalogue)."""
    from .modeldir import ModelDir

    md = ModelDir.open(model)
    tf = md.config().data.title_field
    tables = md.open_index(log=lambda s: None) if title_field in (None, tf) else md.catalog_tables(title_field, log=lambda s: None)
    return md.pipeline(tables).search(query, k, category)


def print_hits(query: str, res) -> None:
    hits = res.hits
    groups = list(hits[0]["contributions"]) if hits else []
    t = Table(title=f"{query!r}: top {len(hits)} ({res.timings_ms['total_ms']:.0f} ms)")
    for c in ["#", "product", "title", "score"] + groups + ["matched"]:
        t.add_column(c)
    for h in hits:
        t.add_row(str(h["rank"]), h["product_id"], str(h["title"])[:48], f"{h['score']:.3f}",
                  *[f"{h['contributions'].get(g, 0):+.3f}" for g in groups],
                  ",".join(sorted(set().union(*h["matched_terms"].values()))))
    console.print(t)
    console.print("columns per modality: contribution to the score (score minus the score without that modality)")


@app.command()
def search(
    model: Path = typer.Argument(..., help="model directory"),
    query: str = typer.Argument(..., help="the search query"),
    k: int = typer.Option(10, "-k", help="how many results"),
    category: Optional[str] = typer.Option(None, help="filter by top-level category"),
    title_field: Optional[str] = typer.Option(None, "--title-field"),
    json_out: bool = typer.Option(False, "--json"),
):
    """Print the top K products for QUERY with each modality's contribution to the score (through the saved index)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result only (libraries print while loading)
            res = _search(model, query, k, category, title_field)
    except FusionrankError as e:
        _fail(e)
    if json_out:
        print(json.dumps({"query": query, "understood": res.understood.as_dict(), "timing_ms": res.timings_ms,
                          "results": res.hits}, default=str))
        return
    if res.understood.changed:
        console.print(f"searched as {res.understood.rewritten!r}: " + "; ".join(str(m) for m in res.understood.mappings))
    print_hits(query, res)


@app.command()
def understand(
    model: Path = typer.Argument(..., help="model directory"),
    query: list[str] = typer.Option([], "--query", "-q", help="show how these queries are rewritten (repeatable)"),
    rebuild: bool = typer.Option(False, help="rebuild the model's query understanding from its training queries"),
):
    """Show (or build) how the model rewrites queries into words it trained on: "men's specs" -> "men's sunglasses"."""
    from .experiment import understand_model
    from .modeldir import ModelDir

    try:
        md = ModelDir.open(model)
        if rebuild or md.understanding() is None:
            understand_model(model, log=lambda s: console.print(s))
        tf = md.config().data.title_field
        pipe = md.pipeline(md.catalog_tables(tf, log=lambda s: None)) if query else None
    except FusionrankError as e:
        _fail(e)
    for q in query:
        u = pipe.understanding.understand(q)
        how = "; ".join(str(m) for m in u.mappings) + (f" (ignored: {', '.join(u.dropped)})" if u.dropped else "")
        console.print(f"{q!r} -> {u.rewritten!r}" + (f": {how}" if how else ""))


@app.command("index")
def build_index(
    model: Path = typer.Argument(..., help="model directory"),
    codec: Optional[str] = typer.Option(None, help="vector search: exact, flat or sq8 (default: the config's [vectors])"),
    table_dtype: Optional[str] = typer.Option(None, "--table-dtype",
                                              help="embedding tables the ranker reads: float32 or float16 (default: the config's [index])"),
):
    """Build the model's serving index (MODEL/index) from its catalogue and embedding store; nothing is encoded."""
    from .modeldir import ModelDir
    from .ranking.tables import table_dtype as table_dtype_of

    try:
        t0 = time.perf_counter()
        if table_dtype is not None:
            table_dtype_of(table_dtype)  # an unknown name is an error listing the valid ones
        idx = ModelDir.open(model).build_index(codec, log=lambda s: console.print(s), table_dtype=table_dtype)
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]index written[/] to {Path(model) / 'index'}: {len(idx):,} products in {time.perf_counter() - t0:.1f} s")


@app.command()
def tune(
    config: Path = typer.Option(..., "--config", "-c", help="experiment config (TOML or YAML) to start from"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for trials.csv and best.json"),
    trials: int = typer.Option(12, help="number of Optuna trials"),
    timeout: Optional[float] = typer.Option(None, help="stop starting trials after this many seconds"),
):
    """Optuna search over learning rate, dropout, fusion method and loss (scored on held-out training queries)."""
    from .experiment import ExperimentConfig
    from .tune import tune as run_tune

    try:
        cfg = ExperimentConfig.load(config)
        res = run_tune(cfg, out, n_trials=trials, config_path=config.resolve(), log=lambda s: console.print(s), timeout=timeout)
    except FusionrankError as e:
        _fail(e)
    console.print(f"best valid ndcg@10 {res['best_value']:.4f} with {res['best_params']}; config in {out / 'best.json'}")


# --------------------------------------------------------------------------- events
events_app = typer.Typer(no_args_is_help=True, help="The event store: searches served and shopper events (export, purge, stats).")
app.add_typer(events_app, name="events")

_STORE_HELP = "event store: a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
_KEY_HELP = ("file holding the store's hash key (default: $FUSIONRANK_EVENTS_HASH_KEY, else events.key beside a SQLite "
             "store)")


def _open_events(store: str, key_file: Optional[Path], retention_days: Optional[float] = None):
    """Open an existing event store with its hash key; errors say what is missing."""
    from .feedback.store import open_existing

    try:
        return open_existing(store, key_file, retention_days)
    except (FusionrankError, ValueError, ImportError) as e:
        _fail(e)


@events_app.command("export")
def events_export(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write the files into"),
    fmt: str = typer.Option("ubi", "--format", help="export format (ubi: UBI 1.3 NDJSON for OpenSearch)"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
):
    """Write the stored searches and events as UBI NDJSON (ubi_queries.ndjson, ubi_events.ndjson and _bulk variants)."""
    formats = ("ubi",)
    if fmt not in formats:
        _fail(FusionrankError(f"unknown export format {fmt!r}; valid formats: {', '.join(formats)}"))
    from .feedback.ubi import export_ubi

    st = _open_events(store, key_file)
    try:
        stats: dict = {}
        paths = export_ubi(st, out, stats=stats)
    finally:
        st.close()
    for name, p in paths.items():
        console.print(f"{name:>13}: {p}")
    console.print(f"{stats['queries']:,} searches, {stats['events']:,} events"
                  + (f" ({stats['events_without_position']:,} without a position left out)" if stats["events_without_position"] else ""))


@events_app.command("purge")
def events_purge(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    retention_days: Optional[float] = typer.Option(None, help="keep this many days (default: $FUSIONRANK_EVENTS_RETENTION_DAYS, 90; 0 keeps all)"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
):
    """Delete searches and events older than the retention (and slates and vectors nothing refers to any more)."""
    st = _open_events(store, key_file, retention_days)
    try:
        gone = st.purge()
        counts = st.counts()
    finally:
        st.close()
    print(json.dumps({"deleted": gone, "remaining": counts, "retention_days": st.retention_days}))


@events_app.command("stats")
def events_stats(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
):
    """Rows per table of the event store, as JSON."""
    st = _open_events(store, key_file)
    try:
        counts = st.counts()
    finally:
        st.close()
    print(json.dumps({"store": st.dialect.name, **counts}))


# --------------------------------------------------------------------------- model registry
models_app = typer.Typer(no_args_is_help=True, help="The model registry: versions, their lineage, states and decisions.")
app.add_typer(models_app, name="models")

_REGISTRY_HELP = "model registry directory (`fusionrank models init` creates one)"
_INTERVAL_HELP = ("the interleaving preference's interval: bootstrap (valid for one look) or sequential (a confidence "
                  "sequence, valid however often it is looked at)")


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time from ``text``: unix seconds, an ISO 8601 date or date-time (local time unless it has a zone),
    or a span back from now: ``90s``, ``30m``, ``2h``, ``7d``."""
    import re
    from datetime import datetime

    now = time.time() if now is None else now
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", t)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise FusionrankError(f"time {text!r}: use unix seconds, an ISO date or date-time (2026-12-01T09:00), "
                              "or a span back from now (90s, 30m, 2h, 7d)") from None


def _open_registry(path: Path):
    from .models import ModelRegistry

    try:
        return ModelRegistry.open(path)
    except FusionrankError as e:
        _fail(e)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _policy_from(policy_file: Optional[Path], overrides: dict, base: dict | None = None):
    """A promotion policy: ``base`` (e.g. a registry's), then the file's ``[policy]`` table (or top level), then the
    options given (None = not given)."""
    from pydantic import ValidationError

    from .config import load_config
    from .models import PromotionPolicy

    raw: dict = dict(base or {})
    if policy_file is not None:
        f = load_config(policy_file)
        raw.update(f.get("policy", f))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PromotionPolicy.model_validate(raw)
    except ValidationError as e:
        raise FusionrankError(f"invalid promotion policy:\n{e}") from None


@models_app.command("init")
def models_init(
    registry: Path = typer.Argument(..., help="directory to create the registry in"),
    policy: Optional[Path] = typer.Option(None, help="TOML/YAML file with the promotion policy (a [policy] table or top level)"),
    mode: Optional[str] = typer.Option(None, help="auto (the service promotes once the gate passes) or manual (default)"),
    tolerance: Optional[float] = typer.Option(None, help="largest allowed offline drop of the policy metric (default 0.005)"),
    interleave_share: Optional[float] = typer.Option(None, help="share of searches interleaved (default 0.2)"),
    min_searches: Optional[int] = typer.Option(None, help="credited interleaved searches before a decision (default 200)"),
    interval: Optional[str] = typer.Option(None, help=_INTERVAL_HELP + " (default bootstrap)"),
):
    """Create an empty model registry with its promotion policy."""
    from .models import ModelRegistry

    try:
        pol = _policy_from(policy, {"mode": mode, "tolerance": tolerance, "interleave_share": interleave_share,
                                    "min_searches": min_searches, "interval": interval})
        ModelRegistry.create(registry, pol)
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]registry created[/] in {registry}; policy {pol.model_dump()}")


@models_app.command("policy")
def models_policy(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    policy: Optional[Path] = typer.Option(None, help="TOML/YAML file with the promotion policy"),
    mode: Optional[str] = typer.Option(None, help="auto or manual"),
    tolerance: Optional[float] = typer.Option(None),
    interleave_share: Optional[float] = typer.Option(None),
    min_searches: Optional[int] = typer.Option(None),
    interval: Optional[str] = typer.Option(None, help=_INTERVAL_HELP + " (default bootstrap)"),
):
    """Show the promotion policy, or change the fields given (the rest stay as they are)."""
    reg = _open_registry(registry)
    over = {"mode": mode, "tolerance": tolerance, "interleave_share": interleave_share, "min_searches": min_searches,
            "interval": interval}
    try:
        if policy is not None or any(v is not None for v in over.values()):
            reg.set_policy(_policy_from(policy, over, base=reg.read().policy.model_dump()))
    except FusionrankError as e:
        _fail(e)
    print(json.dumps(reg.read().policy.model_dump(), indent=1))


@models_app.command("add")
def models_add(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    model: Path = typer.Argument(..., help="a model directory written by `fusionrank train`"),
    note: Optional[str] = typer.Option(None, help="a note kept with the version"),
):
    """Register a trained model directory (the registry's first version is promoted, later ones are candidates)."""
    from .models.retrain import judgments_reference

    reg = _open_registry(registry)
    try:
        v = reg.register(model, training_data=judgments_reference(model), note=note)
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]registered[/] {v.id} ({v.model_version}) as {v.state}")


@models_app.command("list")
def models_list(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    json_out: bool = typer.Option(False, "--json", help="print the versions as JSON"),
):
    """Every version: state, parent, training data and offline metric beside its baseline's."""
    idx = _open_registry(registry).read()
    if json_out:
        print(json.dumps([v.model_dump(exclude={"config"}) for v in idx.versions], indent=1))
        return
    m = idx.policy.metric
    t = Table(title=f"{registry}: {len(idx.versions)} version(s), policy {idx.policy.mode}")
    for c in ("id", "state", "parent", "created", "trained on", m, f"baseline {m}", "model version"):
        t.add_column(c)
    for v in idx.versions:
        td = v.training_data
        data = []
        if "events" in td:
            data.append(f"{td['events'].get('searches') or 0:,} searches")
        if "judgments" in td:
            data.append(f"judgments ({td['judgments'].get('queries') or '?'} queries)")
        off = v.offline or {}
        t.add_row(v.id, v.state, v.parent or "-", _when(v.created), ", ".join(data) or "-",
                  f"{off['metrics'][m]:.4f}" if m in off.get("metrics", {}) else "-",
                  f"{off['baseline_metrics'][m]:.4f} ({off.get('baseline')})" if m in off.get("baseline_metrics", {}) else "-",
                  v.model_version)
    console.print(t)


@models_app.command("show")
def models_show(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    version: str = typer.Argument(..., help="version id (v1, v2, ...)"),
):
    """One version as JSON: config, training data, offline metrics, parent, state and the decisions about it."""
    reg = _open_registry(registry)
    idx = reg.read()
    try:
        v = idx.find(version)
    except FusionrankError as e:
        _fail(e)
    out = v.model_dump()
    out["directory"] = str(reg.model_path(v))
    out["decisions"] = [d.model_dump() for d in idx.decisions if d.version == version]
    print(json.dumps(out, indent=1, default=str))


def _set_state(registry: Path, version: str, to: str, reason: str) -> None:
    reg = _open_registry(registry)
    try:
        d = reg.set_state(version, to, actor="cli", reason=reason)
    except FusionrankError as e:
        _fail(e)
    console.print(f"{version}: {d.from_state} -> {d.to_state}")


@models_app.command("interleave")
def models_interleave(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    version: str = typer.Argument(..., help="version id"),
    reason: str = typer.Option("", help="why (kept in the decision history)"),
):
    """Start interleaving a candidate with the promoted version (a service following the registry picks it up)."""
    _set_state(registry, version, "interleaving", reason)


@models_app.command("retire")
def models_retire(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    version: str = typer.Argument(..., help="version id"),
    reason: str = typer.Option("", help="why (kept in the decision history)"),
):
    """Retire a version (the promoted one is replaced by promoting another instead)."""
    _set_state(registry, version, "retired", reason)


@models_app.command("promote")
def models_promote(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    version: str = typer.Argument(..., help="version id"),
    store: Optional[str] = typer.Option(None, "--store", help="event store with the interleaved searches (" + _STORE_HELP + ")"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
    force: bool = typer.Option(False, help="promote even if the gate refuses (recorded as forced, with the gate's evidence)"),
    reason: str = typer.Option("", help="why (kept in the decision history)"),
):
    """Promote a version if it passes the gate (offline within tolerance AND interleaving CI above zero); recorded either way."""
    from .models import decide

    reg = _open_registry(registry)
    st = _open_events(store, key_file) if store else None
    try:
        res = decide(reg, version, st, actor="cli", force=force, record_wait=True, reason=reason)
    except FusionrankError as e:
        _fail(e)
    finally:
        if st is not None:
            st.close()
    for r in res.reasons:
        console.print(f"  {r}")
    if res.verdict == "promote" or force:
        console.print(f"[bold green]promoted[/] {version}" + (" (forced)" if force and res.verdict != "promote" else ""))
    else:
        console.print(f"[bold red]not promoted[/]: the gate says {res.verdict} (recorded)")
        raise typer.Exit(1)


@models_app.command("evaluate")
def models_evaluate(
    registry: Path = typer.Argument(..., help=_REGISTRY_HELP),
    version: str = typer.Argument(..., help="version id"),
):
    """Measure a version and the promoted one on the evaluation queries; keep the result as the version's offline metrics."""
    from .models import offline_comparison

    reg = _open_registry(registry)
    try:
        idx = reg.read()
        v, p = idx.find(version), idx.promoted()
        if p is None:
            raise FusionrankError("the registry has no promoted version to compare with")
        off = offline_comparison(reg.model_path(v), reg.model_path(p), baseline_id=p.id, log=lambda m: console.print(m))
        with reg.edit() as ix:
            ix.find(version).offline = off
    except FusionrankError as e:
        _fail(e)


@app.command()
def retrain(
    registry: Path = typer.Option(..., "--registry", "-r", help=_REGISTRY_HELP),
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    since: Optional[str] = typer.Option(None, help="searches from this time on: unix seconds, ISO date-time, or 2h / 7d ago"),
    until: Optional[str] = typer.Option(None, help="searches before this time (default: now)"),
    labels: str = typer.Option("ips", help="click labels: naive, ips, affine or dr"),
    propensity: str = typer.Option("swaps", help="position bias: swaps (needs `serve --randomise-share`), harvest (needs two "
                                   "or more logged model versions), em, trust_em or a saved bias .json"),
    propensity_searches: str = typer.Option("all", help="searches the position bias is estimated from: all (every "
                                            "non-interleaved search before --until) or training (those trained on)"),
    loss: str = typer.Option("ips_listwise", help="loss of the new version (ips_listwise / ips_pairwise are linear in the labels)"),
    judgments_weight: float = typer.Option(0.0, help="> 0: the judged training queries join, grades scaled by this"),
    epochs: Optional[int] = typer.Option(None, help="training epochs (default: the promoted version's)"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
    interleave: bool = typer.Option(False, help="start interleaving the new version at once, unless it regresses offline"),
    index: Optional[Path] = typer.Option(None, help="the serving index the searches came from: its candidate and vector "
                                         "settings rebuild what shoppers saw (default: the promoted version's index)"),
):
    """Train a candidate from the event store on top of the promoted version; register it with offline metrics beside its parent's."""
    from .models import start_interleaving
    from .models.retrain import retrain as run_retrain

    reg = _open_registry(registry)
    try:
        v = run_retrain(reg, store, since=parse_time(since) if since else None, until=parse_time(until) if until else None,
                        labels=labels, propensity=propensity, propensity_searches=propensity_searches, loss=loss,
                        judgments_weight=judgments_weight, key_file=str(key_file) if key_file else None, epochs=epochs,
                        index=str(index) if index else None, log=lambda m: console.print(m))
        if interleave:
            start_interleaving(reg, v.id, log=lambda m: console.print(m))
    except FusionrankError as e:
        _fail(e)
    console.print(f"[bold green]registered[/] {v.id} ({v.model_version}) as a candidate of {v.parent}")


@app.command()
def loop(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="the starting model directory (its index and catalogue "
                                         "are served; default: the `fusionrank demo` model)"),
    registry: Optional[Path] = typer.Option(None, "--registry", "-r", help="model registry, created with MODEL as v1 if "
                                            "missing (default: $FUSIONRANK_HOME/models/loop-registry)"),
    rounds: int = typer.Option(3, min=1, help="retrain -> interleave -> promote rounds"),
    sessions: int = typer.Option(2000, min=1, help="simulated sessions logged before each retraining"),
    interleave_batch: int = typer.Option(500, min=1, help="sessions between two runs of the gate while interleaving"),
    max_interleave_sessions: int = typer.Option(20_000, min=1, help="a candidate still undecided after this many is retired"),
    click_model: str = typer.Option("pbm", help="simulated shoppers' click model (pbm, trust_bias, cascade, dbn, grid_pbm)"),
    labels: str = typer.Option("ips", help="click labels of retraining: naive, ips, affine or dr"),
    propensity: str = typer.Option("swaps", help="position bias estimator of retraining (swaps: from the service's "
                                   "randomised searches, see --randomise-share)"),
    randomise_share: float = typer.Option(0.1, min=0.0, max=1.0, help="share of searches whose top result the service "
                                          "swaps with a random one of the top k (what 'swaps' estimates from)"),
    explore_share: float = typer.Option(0.0, min=0.0, max=1.0, help="share of searches the service explores: --explore-count "
                                        "random positions show candidates ranked k+1..--explore-depth"),
    explore_depth: int = typer.Option(50, min=2, help="deepest rank an explored search draws from"),
    explore_count: int = typer.Option(1, min=1, help="positions of an explored search that show a candidate ranked "
                                      "k+1..--explore-depth"),
    train_on: str = typer.Option("all", help="searches each retraining reads: all (every logged search so far) or "
                                 "round (the searches of this round)"),
    dm_regressor: str = typer.Option("ridge", help="--labels dr: the direct method's regressor (ridge, lightgbm, "
                                     "lightgbm_linear, partially_linear)"),
    logging_scores: bool = typer.Option(False, help="--labels dr: the direct method also reads the scores of the "
                                        "promoted version that served the round"),
    judgments_weight: float = typer.Option(0.0, help="> 0: judged training queries join retraining, grades scaled by this"),
    epochs: Optional[int] = typer.Option(None, help="training epochs of each candidate (default: the parent's)"),
    policy: Optional[Path] = typer.Option(None, help="TOML/YAML file with the promotion policy of a new registry"),
    interleave_share: Optional[float] = typer.Option(None, help="share of searches interleaved (default: the policy's)"),
    tolerance: Optional[float] = typer.Option(None, help="largest allowed offline drop (default: the policy's)"),
    min_searches: Optional[int] = typer.Option(None, help="credited interleaved searches before a decision (default: the policy's)"),
    interval: Optional[str] = typer.Option(None, help=_INTERVAL_HELP + " (default: the policy's)"),
    seed: int = typer.Option(0, help="seed of the shoppers"),
    simulate: str = typer.Option("http", help="sessions before each retraining: http (each through the HTTP API) or "
                                 "cached (in bulk through the service's event store: one search per distinct query)"),
    interleave_simulate: str = typer.Option("http", help="sessions while a candidate interleaves: http or cached (in "
                                            "bulk, with the service's team drafts; raise --interleave-batch with it)"),
    serve_after: bool = typer.Option(False, "--serve/--no-serve", help="keep serving the promoted version afterwards"),
    port: int = typer.Option(0, help="port of the service (0: a free one)"),
    json_out: bool = typer.Option(False, "--json", help="print the rounds as JSON on stdout"),
):
    """Close the loop with simulated shoppers: serve -> simulate -> retrain -> interleave -> promote, ROUNDS times."""
    from .models import ModelRegistry
    from .models.loop import run_loop
    from .settings import get_settings

    models_dir = get_settings().models_dir
    model = model or models_dir / "demo"
    registry = registry or models_dir / "loop-registry"
    try:
        if not (model / "config.json").is_file():
            raise FusionrankError(f"{model}: no model to start the loop from; make one with `fusionrank demo --no-serve` "
                                  "or pass --model")
        over = {"interleave_share": interleave_share, "tolerance": tolerance, "min_searches": min_searches, "interval": interval}
        pol = None
        if policy is not None or any(v is not None for v in over.values()):
            base = ModelRegistry.open(registry).read().policy.model_dump() if (registry / "registry.json").exists() else {}
            pol = _policy_from(policy, over, base=base)
        reps = run_loop(model, registry, rounds=rounds, sessions=sessions, interleave_batch=interleave_batch,
                        max_interleave_sessions=max_interleave_sessions, click_model=click_model, labels=labels,
                        propensity=propensity, randomise_share=randomise_share, train_on=train_on,
                        explore_share=explore_share, explore_depth=explore_depth, explore_count=explore_count, dm_regressor=dm_regressor, logging_scores=logging_scores, judgments_weight=judgments_weight, epochs=epochs, policy=pol, seed=seed,
                        simulate=simulate, interleave_simulate=interleave_simulate, serve_forever=serve_after, port=port, log=lambda m: console.print(m, markup=False, highlight=False))
    except FusionrankError as e:
        _fail(e)
    if json_out:
        print(json.dumps([r.as_dict() for r in reps], indent=1))
        return
    t = Table(title=f"the loop over {model} ({registry})")
    for c in ("round", "candidate", "outcome", "serving", "ndcg@10", "candidate ndcg@10", "sessions", "interleaved",
              "preference", "CI", "s"):
        t.add_column(c)
    for r in reps:
        t.add_row(str(r.round), r.candidate or "-", r.outcome, r.promoted,
                  "-" if r.promoted_ndcg is None else f"{r.promoted_ndcg:.4f}",
                  "-" if r.candidate_ndcg is None else f"{r.candidate_ndcg:.4f}", f"{r.sessions_logged:,}",
                  f"{r.sessions_interleaving:,}", "-" if r.preference is None else f"{r.preference:+.3f}",
                  "-" if r.ci is None else f"[{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]", f"{r.seconds:.0f}")
    console.print(t)


interleave_app = typer.Typer(no_args_is_help=True, help="Team-draft interleaving of the promoted model with candidates.")
app.add_typer(interleave_app, name="interleave")


@interleave_app.command("report")
def interleave_report(
    store: str = typer.Option(..., "--store", help=_STORE_HELP),
    registry: Optional[Path] = typer.Option(None, help="name model versions by their registry ids"),
    since: Optional[str] = typer.Option(None, help="interleaved searches from this time on"),
    confidence: float = typer.Option(0.95, help="of the interval"),
    interval: str = typer.Option("bootstrap", help=_INTERVAL_HELP),
    sequential_searches: int = typer.Option(10_000, min=1, help="--interval sequential: credited searches where the "
                                            "interval is tightest"),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help=_KEY_HELP),
    json_out: bool = typer.Option(False, "--json"),
):
    """Per comparison: wins, losses and ties of the candidate, its preference with an interval, and the searches used."""
    from .feedback.interleave import INTERVAL_NAMES, interleaving_report

    names = {}
    if registry is not None:
        names = {v.model_version: v.id for v in _open_registry(registry).read().versions}
    st = _open_events(store, key_file)
    try:
        reps = interleaving_report(st, since=parse_time(since) if since else None, confidence=confidence, interval=interval,
                                   optimal_n=sequential_searches)
    except FusionrankError as e:
        _fail(e)
    finally:
        st.close()
    if json_out:
        print(json.dumps([{**r.as_dict(), "control_id": names.get(r.control), "candidate_id": names.get(r.candidate)}
                          for r in reps], indent=1))
        return
    t = Table(title=f"team-draft interleaving in {store}")
    for c in ("promoted", "candidate", "searches", "used", "sessions", "wins", "losses", "ties", "preference",
              f"{confidence:.0%} {INTERVAL_NAMES.get(interval, 'CI')}"):
        t.add_column(c)
    for r in reps:
        t.add_row(names.get(r.control, r.control), names.get(r.candidate, r.candidate), f"{r.searches:,}", f"{r.used:,}",
                  f"{r.sessions:,}", f"{r.wins:,}", f"{r.losses:,}", f"{r.ties:,}",
                  "-" if r.preference is None else f"{r.preference:+.3f}",
                  "-" if r.ci is None else f"[{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]")
    console.print(t)
    if not reps:
        console.print("no interleaved searches")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
