"""Experiment configs, ``train`` into a model directory, and the model-directory round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_fashion import tiny_config_dict
from fusionrank.errors import FusionrankError
from fusionrank.experiment import ExperimentConfig, evaluate_pipeline
from fusionrank.modeldir import ModelDir
from fusionrank.rankers import GBDTRanker, NeuralRanker

REPO = Path(__file__).resolve().parents[1]


# --- configs -------------------------------------------------------------------
def test_fashion44k_config_loads_and_validates():
    import tomllib

    path = REPO / "configs" / "fashion44k.toml"
    raw = tomllib.loads(path.read_text())
    cfg = ExperimentConfig.load(path)
    dumped = cfg.model_dump()
    # every value in the file arrives in the typed config unchanged
    for section, values in raw.items():
        if section == "encoders":
            for name, block in values.items():
                assert dumped["encoders"][name] == {"name": block["name"], "args": block.get("args", {})}
        elif isinstance(values, dict) and "name" in values:            # a {name, args} block
            assert dumped[section] == {"name": values["name"], "args": values.get("args", {})}
        elif isinstance(values, dict):
            for k, v in values.items():
                assert dumped[section][k] == v, (section, k)
        else:
            assert dumped[section] == values, section
    assert set(cfg.modalities) <= {"text", "image", "audio"} and cfg.data.adapter == "fashion44k"
    es = cfg.encode_settings()
    assert set(es.projection_fields) == {"title", *cfg.data.train_title_fields, cfg.data.title_field}
    assert set(es.projection_fields) <= set(es.text_fields) and "description" in es.text_fields
    cc = cfg.catalog_config("title_sparse", codec="exact")
    assert cc.title_field == "title_sparse" and cc.ann.codec == "exact"
    for k, v in raw.get("candidates", {}).items():
        assert getattr(cc.candidates, k) == v
    r = cfg.build_ranker()
    assert isinstance(r, NeuralRanker) and r.fusion == cfg.fusion.name and r.epochs == cfg.training.epochs
    assert r.hidden == cfg.scorer.args.get("hidden", 64) and r.loss == cfg.loss.model_dump()
    # the resolved config survives a JSON round trip (as written to config.json)
    assert ExperimentConfig.model_validate(json.loads(json.dumps(cfg.model_dump()))) == cfg


@pytest.mark.parametrize("snippet, key", [
    ('learning_rate = 0.1\n', "learning_rate"),                        # top level
    ('[candidates]\ndeepth = 100\n', "deepth"),                       # the typed candidate stage
    ('[vectors]\nnprobes = 8\n', "nprobes"),
    ('[training]\nepoch = 3\n', "epoch"),                              # nested table
    ('[data]\ntitle_fields = ["title"]\n', "title_fields"),
    ('[fusion]\nname = "gated"\nargz = {}\n', "argz"),                 # inside a {name, args} block
])
def test_unknown_keys_give_a_clear_error(tmp_path, snippet, key):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n' + snippet)
    with pytest.raises(FusionrankError) as e:
        ExperimentConfig.load(p)
    msg = str(e.value)
    assert str(p) in msg and "invalid experiment config" in msg and key in msg
    assert "Extra inputs are not permitted" in msg


@pytest.mark.parametrize("snippet, message", [
    ('[scorer]\nname = "mlp"\nargs = { hiden = 8 }\n', "scorer 'mlp': unknown argument 'hiden'; valid: hidden, dropout"),
    ('[fusion]\nname = "gated"\nargs = { atn_dim = 8 }\n', "fusion 'gated': unknown argument 'atn_dim'; valid: attn_dim"),
    ('[loss]\nname = "lambdaloss"\nargs = { weighing = "x" }\n', "unknown argument 'weighing'; valid: padded_value_indicator"),
    ('[encoders.image]\nname = "efficientnet_lite0"\nargs = { resolutoin = 64 }\n', "unknown argument 'resolutoin'"),
    ('[scorer]\nname = "lightgbm"\nargs = { num_leafs = 7 }\n', "scorer 'lightgbm': unknown argument 'num_leafs'"),
    ('[optimizer]\nname = "adam"\nargs = { learning_rate = 0.1 }\n', "unknown argument 'learning_rate'; valid: lr, weight_decay"),
    ('[fusion]\nname = "gatd"\n', "unknown fusion method 'gatd'; valid names: concat, gated"),
    ('[candidates]\nsources = ["bm25:title", "dense:photo"]\n', "unknown candidate source 'dense:photo'; valid: bm25:title"),
])
def test_misspelt_block_arguments_are_errors_listing_the_valid_ones(tmp_path, snippet, message):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n' + snippet)
    with pytest.raises(FusionrankError) as e:
        ExperimentConfig.load(p)
    assert message in str(e.value)


def test_bad_values_give_a_clear_error(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('modalities = ["text", "smell"]\n[training]\nepochs = "many"\n')
    with pytest.raises(FusionrankError) as e:
        ExperimentConfig.load(p)
    assert "modalities" in str(e.value) and "epochs" in str(e.value)
    with pytest.raises(FusionrankError, match="config file not found"):
        ExperimentConfig.load(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("name = \n")
    with pytest.raises(FusionrankError, match="invalid TOML"):
        ExperimentConfig.load(tmp_path / "broken.toml")


def test_yaml_config_and_disabled_encoders(tmp_path, tiny_fashion):
    p = tmp_path / "c.yaml"
    p.write_text(f"name: y\ndata:\n  source: {tiny_fashion.root}\nencoders:\n  transcriber: null\n  audio_features: null\n")
    cfg = ExperimentConfig.load(p)
    es = cfg.encode_settings()
    assert es.transcriber is None and es.audio_features is None and es.text["name"] == "minilm"


def test_unknown_optimizer(tiny_fashion):
    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, optimizer={"name": "sgd"}))
    with pytest.raises(FusionrankError, match="unknown optimizer 'sgd'"):
        cfg.build_ranker()


# --- train -> model directory ----------------------------------------------------
def test_train_writes_the_model_directory(tiny_model, tiny_fashion):
    out, metrics, _ = tiny_model
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "config.json", "features.json", "index", "metrics.json", "ranker", "understanding.json",
                                                          "understanding.npy", "workspace.json"]
    assert (out / "index" / "index.json").is_file()                       # the serving index is prepared with the model
    from fusionrank.modalities import SCALAR_FEATURES                     # the ranker's features, by name
    assert json.loads((out / "features.json").read_text())["scalar_features"] == list(SCALAR_FEATURES)
    assert {"ranker.json", "weights.pt"} <= {p.name for p in (out / "ranker").iterdir()}
    cfg = ExperimentConfig.model_validate(json.loads((out / "config.json").read_text()))
    assert cfg == ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root))
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(metrics)) and m["index_seconds"] >= 0
    assert (m["train_queries"], m["valid_queries"]) == (18, 6)          # 24 train queries, 25 % held out
    for tf in ("title", "title_sparse"):
        res = m[f"dev/{tf}"]
        assert set(res) == {"ndcg@10", "map", "mrr", "recall@100"}
        assert all(0.0 <= v <= 1.0 for v in res.values())
    assert m["dev/title"]["ndcg@10"] > 0.5                               # colour words in the title: easy
    assert 0.0 <= m["best_valid_ndcg@10"] <= 1.0
    alpha = json.loads((out / "alpha.json").read_text())
    assert alpha["kind"] == "mean applied weight on validation candidates"   # gated fusion: no global alpha
    w = alpha["weights"]
    assert set(w) == {"text", "image", "audio"} and all(0.0 <= v <= 1.0 for v in w.values())
    assert w == m["alpha"]
    ws = json.loads((out / "workspace.json").read_text())
    assert Path(ws["source"]) == tiny_fashion.root.resolve() and Path(ws["catalog"]).is_dir() and Path(ws["store"]).is_dir()
    feats = {j["feature"] for j in ws["encode"]}
    assert {"title.minilm", "title_sparse.minilm", "image.efficientnet_lite0", "image_proj.title"} <= feats


def test_workspace_lives_under_the_isolated_home(tiny_model, fusionrank_home):
    ws = json.loads((tiny_model[0] / "workspace.json").read_text())
    assert Path(ws["catalog"]).is_relative_to(fusionrank_home) and Path(ws["store"]).is_relative_to(fusionrank_home)


def assert_same_run(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["query_id", "product_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())


@pytest.mark.parametrize("which", ["tiny_model", "tiny_lgbm_model"])
def test_model_directory_round_trip_reproduces_scores(request, which, tiny_fashion):
    """Reloading the directory gives exactly the scores the freshly trained ranker gave, per title field."""
    out, metrics, runs = request.getfixturevalue(which)
    assert set(runs) == {"title", "title_sparse"}
    dev_q = tiny_fashion.queries["dev"]
    dev_qrels = tiny_fashion.qrels["dev"]
    for tf in ("title", "title_sparse"):
        md = ModelDir.open(out)
        pipe = md.pipeline(md.catalog_tables(tf, log=lambda m: None))
        assert pipe.catalog.config.title_field == tf
        res = evaluate_pipeline(pipe, dev_q, dev_qrels)
        assert len(res["run"]) == len(runs[tf]) > 0
        assert_same_run(res["run"], runs[tf])
        assert res["mean"] == metrics[f"dev/{tf}"] and res["queries"] == 8


def test_model_directory_kinds(tiny_model, tiny_lgbm_model, tmp_path):
    md = ModelDir.open(tiny_model[0])
    ranker = md.load_ranker()
    assert isinstance(ranker, NeuralRanker) and md.config().fusion.name == "gated" and ranker.hidden == 16
    assert md.workspace().store
    md = ModelDir.open(tiny_lgbm_model[0])
    ranker = md.load_ranker()
    assert isinstance(ranker, GBDTRanker) and md.config().scorer.name == "lightgbm" and ranker.min_child_samples == 2
    assert json.loads((md.ranker_dir / "ranker.json").read_text())["kind"] == "lightgbm"
    with pytest.raises(FusionrankError, match="not a model directory"):
        ModelDir.open(tmp_path)


def test_lightgbm_model_directory(tiny_lgbm_model):
    out, metrics, _ = tiny_lgbm_model
    assert (out / "ranker" / "lightgbm.txt").is_file() and (out / "ranker" / "projections.npz").is_file()
    alpha = json.loads((out / "alpha.json").read_text())
    assert alpha == {"kind": "n/a", "weights": None}
    assert metrics["best_valid_ndcg@10"] is None and 0.0 <= metrics["dev/title"]["ndcg@10"] <= 1.0


def test_train_with_a_missing_source_fails_clearly(tmp_path, fusionrank_home):
    from fusionrank.experiment import train

    cfg = ExperimentConfig.model_validate({"data": {"source": str(tmp_path / "nowhere")}})
    with pytest.raises(FusionrankError, match="not found"):
        train(cfg, tmp_path / "m", log=lambda m: None, progress=False)


def test_tune_searches_fusion_loss_lr_dropout(tiny_workspace, tiny_fashion, tmp_path):
    import json

    from fusionrank.errors import UnknownNameError
    from fusionrank.tune import tune

    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, training={"epochs": 1}))
    res = tune(cfg, tmp_path / "tune", n_trials=3, space={"fusion": ["gated", "mean_pool"], "loss": ["listnet", "lambdaloss"]},
               log=lambda m: None)
    assert res["trials"] == 3
    assert set(res["best_params"]) == {"lr", "dropout", "fusion", "loss"}
    assert res["best_params"]["fusion"] in ("gated", "mean_pool")
    saved = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert ExperimentConfig.model_validate(saved["best_config"]).fusion.name == res["best_params"]["fusion"]
    assert (tmp_path / "tune" / "trials.csv").exists()
    with pytest.raises(UnknownNameError, match="valid names"):
        tune(cfg, tmp_path / "bad", n_trials=1, space={"fusion": ["nope"]}, log=lambda m: None)
