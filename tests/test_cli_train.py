"""``fusionrank train / evaluate / search`` on a tiny fashion44k-layout folder (typer CliRunner).

The dataset here has no audio clips, so the config can leave the (default) Whisper
transcriber in place: with nothing to transcribe its model is never loaded.
"""
from __future__ import annotations

import gzip
import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from fixtures_fashion import make_tiny_fashion
from fusionrank.cli import app

METRIC_KEYS = {"ndcg@10", "map", "mrr", "recall@100"}


def squash(text: str) -> str:
    """Text without whitespace: rich wraps (and folds long paths in) messages to the terminal width."""
    return "".join(text.split())


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory, fusionrank_home):
    root = tmp_path_factory.mktemp("cli") / "tinyfashion_cli"
    data = make_tiny_fashion(root, audio=False)
    toml = root.parent / "tiny.toml"
    toml.write_text(f"""
name = "tiny-cli"
seed = 0
modalities = ["text", "image", "audio"]

[data]
source = {json.dumps(str(root))}
adapter = "fashion44k"
title_field = "title"
train_title_fields = ["title", "title_sparse"]
valid_fraction = 0.25

[encoders.text]
name = "minilm"
[encoders.image]
name = "efficientnet_lite0"
args = {{ resolution = 32 }}
[encoders.projection]
name = "image_projection"
args = {{ epochs = 2 }}

[candidates]
n = 20
depth = 20

[fusion]
name = "weighted_sum"

[scorer]
name = "mlp"
args = {{ hidden = 16 }}

[training]
epochs = 2
batch_size = 8
patience = 2
""")
    return data, toml


@pytest.fixture(scope="module")
def cli_model(runner, cli_data, tmp_path_factory):
    _, toml = cli_data
    out = tmp_path_factory.mktemp("cli_models") / "model"
    result = ok(runner.invoke(app, ["train", "--config", str(toml), "--out", str(out)]))
    return out, result


def evaluate_args(model, data, qrels=None, *extra):
    return ["evaluate", "--model", str(model), "--catalog", str(data.root),
            "--queries", str(data.root / "queries_dev.tsv"), "--qrels", str(qrels or data.root / "qrels_dev.tsv"),
            "--title-field", "title_sparse", *extra]


def test_train(cli_model):
    out, result = cli_model
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "config.json", "features.json", "index", "metrics.json", "ranker", "understanding.json",
                                                          "understanding.npy", "workspace.json"]
    assert "{" not in result.stdout                              # progress and the metrics summary go to stderr
    assert "modelwrittento" in squash(result.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics["dev/title_sparse"]) and metrics["train_queries"] == 18
    alpha = json.loads((out / "alpha.json").read_text())
    assert alpha["kind"] == "learned alpha_k (softmax)"          # weighted_sum fusion has global weights
    assert set(alpha["weights"]) == {"text", "image", "audio"}
    assert sum(alpha["weights"].values()) == pytest.approx(1.0, abs=1e-5)


def test_evaluate_prints_one_json_object(runner, cli_model, cli_data):
    data, _ = cli_data
    model, _ = cli_model
    r = ok(runner.invoke(app, evaluate_args(model, data, None, "--json")))
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert METRIC_KEYS | {"queries"} <= set(out)
    assert out["queries"] == 8 and out["title_field"] == "title_sparse" and out["model"] == str(model)
    assert all(0.0 <= out[k] <= 1.0 for k in METRIC_KEYS)
    # the same numbers train() reported for the dev split on the sparse titles
    trained = json.loads((model / "metrics.json").read_text())["dev/title_sparse"]
    assert {k: out[k] for k in METRIC_KEYS} == pytest.approx(trained, abs=1e-12)


def test_evaluate_gzip_qrels_and_per_query(runner, cli_model, cli_data, tmp_path):
    data, _ = cli_data
    model, _ = cli_model
    gz = tmp_path / "qrels_dev.tsv.gz"
    with open(data.root / "qrels_dev.tsv", "rb") as f, gzip.open(gz, "wb") as g:
        shutil.copyfileobj(f, g)
    plain = json.loads(ok(runner.invoke(app, evaluate_args(model, data, None, "--json"))).stdout)
    per_query = tmp_path / "per_query.tsv"
    zipped = json.loads(ok(runner.invoke(app, evaluate_args(model, data, gz, "--json", "--per-query", str(per_query)))).stdout)
    assert {k: zipped[k] for k in METRIC_KEYS | {"queries"}} == {k: plain[k] for k in METRIC_KEYS | {"queries"}}
    assert per_query.is_file() and len(per_query.read_text().strip().splitlines()) == 1 + 8


def test_evaluate_an_unprepared_catalogue_names_the_commands_and_encodes_nothing(runner, cli_model, cli_data, tmp_path,
                                                                                monkeypatch):
    """evaluate opens what exists: a catalogue nobody ingested is an error naming the preparing commands."""
    import fusionrank.encoders.image as image

    monkeypatch.setattr(image, "_NET", {})                 # as in a fresh process: EfficientNet not loaded yet
    model, _ = cli_model
    _, toml = cli_data
    data = make_tiny_fashion(tmp_path / "unseen_catalogue", audio=False)
    products = pd.read_parquet(data.root / "products.parquet")
    products.loc[0, "title"] = "A Title No Other Catalogue Has"   # other content: workspaces are keyed by content
    products.to_parquet(data.root / "products.parquet", index=False)
    r = runner.invoke(app, evaluate_args(model, data, None, "--json"))
    assert r.exit_code == 2 and r.stdout == ""
    msg = squash(r.stderr)
    assert "notingested" in msg and "fusionrankingest" in msg and "fusionrankencode" in msg
    assert "Loaded pretrained weights" not in r.stderr and image._NET == {}   # nothing was encoded
    # prepared with the two commands it names, the same evaluation runs
    cat, store = tmp_path / "prepared" / "catalog", tmp_path / "prepared" / "store"
    ok(runner.invoke(app, ["ingest", str(data.root), "--adapter", "fashion44k", "--out", str(cat)]))
    ok(runner.invoke(app, ["encode", str(cat), "--store", str(store), "--config", str(toml), "--modalities", "text,image"]))
    args = evaluate_args(model, data, None, "--json")
    args[args.index("--catalog") + 1] = str(cat)
    out = json.loads(ok(runner.invoke(app, args)).stdout)
    assert out["queries"] == 8 and out["title_field"] == "title_sparse"


def test_evaluate_a_field_the_store_lacks_names_the_encode_command(runner, cli_model, cli_data):
    data, _ = cli_data
    model, _ = cli_model
    args = evaluate_args(model, data, None, "--json")
    args[args.index("--title-field") + 1] = "title_short"
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.stdout == ""
    msg = squash(r.stderr)
    assert "title_short.minilm" in msg and "fusionrankencode" in msg


def test_search_opens_the_saved_index_and_says_how_to_build_a_missing_one(runner, cli_model, tmp_path):
    model, _ = cli_model
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    shutil.rmtree(copy / "index")
    r = runner.invoke(app, ["search", str(copy), "black tshirt", "--json"])
    assert r.exit_code == 2 and r.stdout == "" and f"fusionrankindex{squash(str(copy))}" in squash(r.stderr)
    ok(runner.invoke(app, ["index", str(copy)]))
    a = json.loads(ok(runner.invoke(app, ["search", str(copy), "black tshirt", "--json"])).stdout)["results"]
    b = json.loads(ok(runner.invoke(app, ["search", str(model), "black tshirt", "--json"])).stdout)["results"]
    assert [h["product_id"] for h in a] == [h["product_id"] for h in b] and len(a) == 10


def test_evaluate_table_output(runner, cli_model, cli_data):
    data, _ = cli_data
    model, _ = cli_model
    r = ok(runner.invoke(app, evaluate_args(model, data)))
    assert r.stdout == "" and "ndcg@10" in r.stderr and "evaluation" in r.stderr


def test_evaluate_bad_qrels(runner, cli_model, cli_data, tmp_path):
    data, _ = cli_data
    model, _ = cli_model
    bad = tmp_path / "bad_qrels.tsv"
    bad.write_text("query_id\tproduct_id\tgrade\nd00\t1000\t3\nd00\t1001\t2\nd00\t1002\thigh\n")
    r = runner.invoke(app, evaluate_args(model, data, bad, "--json"))
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    msg = squash(r.stderr)
    assert "bad_qrels.tsv" in msg and "row2" in msg and "'grade'" in msg and "mustbeaninteger" in msg and "'high'" in msg
    # a missing column names the file and the column
    bad.write_text("query_id\tproduct_id\nd00\t1000\n")
    r = runner.invoke(app, evaluate_args(model, data, bad, "--json"))
    assert r.exit_code == 2 and "bad_qrels.tsv" in squash(r.stderr) and "grade" in r.stderr


def test_search_json(runner, cli_model):
    model, _ = cli_model
    r = ok(runner.invoke(app, ["search", str(model), "black tshirt", "--json"]))
    out = json.loads(r.stdout)
    assert out["query"] == "black tshirt" and len(out["results"]) == 10
    assert {"total_ms", "encode_ms", "rank_ms"} <= set(out["timing_ms"])
    first = out["results"][0]
    assert {"product_id", "score", "rank", "title", "contributions", "weights", "matched_terms"} <= set(first)
    assert set(first["contributions"]) == {"text", "image", "audio"}
    assert all(h["contributions"]["audio"] == 0 for h in out["results"])   # no product has audio
    assert [h["rank"] for h in out["results"]] == list(range(1, 11))
    r = ok(runner.invoke(app, ["search", str(model), "black", "-k", "3", "--category", "Footwear", "--json"]))
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and all(h["category"] == "Footwear" for h in res)


def test_search_table_and_errors(runner, cli_model, tmp_path):
    model, _ = cli_model
    r = ok(runner.invoke(app, ["search", str(model), "red shoes", "-k", "3"]))
    assert "contribution" in r.stderr and "Shoes" in r.stderr
    r = runner.invoke(app, ["search", str(model), "  "])
    assert r.exit_code == 2 and "empty query" in r.stderr
    r = runner.invoke(app, ["search", str(tmp_path), "red shoes"])
    assert r.exit_code == 2 and "notamodeldirectory" in squash(r.stderr)


def test_train_bad_config(runner, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nepoch = 3\n")
    r = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "epoch" in r.stderr and "invalidexperimentconfig" in squash(r.stderr)
    assert not (tmp_path / "m").exists()


def test_train_engine_errors(runner, tmp_path):
    """Engine mistakes are reported before anything is prepared: an unknown name lists the valid ones."""
    cfg = tmp_path / "gbdt.toml"
    cfg.write_text('[data]\nsource = "nowhere"\n[scorer]\nname = "lightgbm"\n')
    for extra, message in [(["--engine", "spark"], "unknowntrainingengine'spark';validnames:local,ray"),
                           (["--workers", "2"], "--workersand--ray-addressneed--engineray"),
                           (["--engine", "ray"], "'lightgbm'rankertrainswith--enginelocal")]:
        r = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "m"), *extra])
        assert r.exit_code == 2 and message in squash(r.stderr), (extra, r.stderr)
        assert not (tmp_path / "m").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_train_on_ray_then_evaluate(runner, cli_data, tmp_path):
    """``--engine ray --workers 2`` writes the same model directory (plus its checkpoints), which evaluate opens unchanged."""
    data, toml = cli_data
    out = tmp_path / "ray_model"
    ok(runner.invoke(app, ["train", "--config", str(toml), "--out", str(out), "--engine", "ray", "--workers", "2"]))
    assert (out / "ray_train" / "final" / "ranker" / "weights.pt").is_file() and (out / "ranker" / "ranker.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_engine"] == {"name": "ray", "workers": 2}
    out_eval = json.loads(ok(runner.invoke(app, evaluate_args(out, data, None, "--json"))).stdout)
    assert out_eval["ndcg@10"] == pytest.approx(metrics["dev/title_sparse"]["ndcg@10"], abs=1e-6)
