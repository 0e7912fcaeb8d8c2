"""`fusionrank train` with an event store as its data source: clicks logged by the service train the same ranker."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrank.errors import UnknownNameError


@pytest.fixture(scope="module")
def click_store(tiny_model, tiny_fashion, tmp_path_factory):
    """A service over the tiny model randomising a fifth of its searches, 4,000 simulated PBM sessions over the training
    queries, logged to SQLite."""
    from fusionrank.feedback.clickmodels import PositionBased, PowerLawExamination
    from fusionrank.feedback.simulate import Shoppers
    from fusionrank.serving.build import open_service

    data = tmp_path_factory.mktemp("shop") / "service-data"
    svc = open_service(tiny_model[0], data_dir=data, randomise_share=0.2, log=lambda m: None)
    shoppers = Shoppers(tiny_fashion.queries["train"], tiny_fashion.qrels["train"], PositionBased(PowerLawExamination(1.0)),
                        k=8, seed=0)
    shoppers.run_cached(svc, 4000, log=None)
    svc.close()
    return data / "events.sqlite"


@pytest.mark.parametrize("labels, loss", [("ips", "ips_listwise"), ("dr", "ips_pairwise"), ("naive", "lambdaloss")])
def test_train_from_clicks(click_store, tiny_fashion, tmp_path, labels, loss):
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig, train
    from fusionrank.modalities import SCALAR_FEATURES
    from fusionrank.modeldir import ModelDir

    cfg = ExperimentConfig.model_validate(tiny_config_dict(
        tiny_fashion.root, loss={"name": loss, "args": {}},
        events={"store": str(click_store), "labels": labels}))  # propensities: swaps, the default
    metrics = train(cfg, tmp_path / "m", log=lambda m: None, progress=False, build_index=False)
    c = metrics["clicks"]
    assert c["searches"] == 4000 and c["labels"] == labels and c["queries"] <= len(tiny_fashion.queries["train"])
    # the service logged exactly the features the ranking path computes again for training
    assert c["skew"]["products_checked"] > 0 and c["skew"]["max_abs_difference"] == 0.0
    if labels != "naive":
        assert len(c["theta"]) >= 8 and c["theta"][0] == pytest.approx(1.0) and c["theta"][7] < c["theta"][0]
    assert metrics["dev/title"]["ndcg@10"] > 0.2
    md = ModelDir.open(tmp_path / "m")
    assert md.load_ranker().n_features_ == len(SCALAR_FEATURES) and json.loads((md.path / "config.json").read_text())["events"]["labels"] == labels


def test_events_block_is_checked(tiny_fashion, click_store):
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig

    with pytest.raises(Exception, match="click labeler .*valid names: .*ips"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(click_store), "labels": "ipss"}))
    with pytest.raises(Exception, match="unknown action 'share'"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(click_store),
                                                                                    "action_weights": {"share": 1}}))
    with pytest.raises(Exception, match="valid names: .*harvest"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(click_store), "propensity": "magic"}))
    with pytest.raises(Exception, match="direct-method regressor .*valid names: .*lightgbm_linear"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(click_store), "labels": "dr",
                                                                                    "dm_regressor": "forest"}))
    with pytest.raises(Exception, match="'trees_plus_slope' needs \\[events\\] logging_model"):
        ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(click_store), "labels": "dr",
                                                                                    "dm_regressor": "trees_plus_slope"}))


def test_missing_store_is_a_clear_error(tiny_fashion, tmp_path):
    from fixtures_fashion import tiny_config_dict
    from fusionrank.errors import FusionrankError
    from fusionrank.experiment import ExperimentConfig, train

    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, events={"store": str(tmp_path / "none.sqlite")}))
    with pytest.raises(FusionrankError, match="no event store at"):
        train(cfg, tmp_path / "m", log=lambda m: None, progress=False, build_index=False)


def test_dr_with_the_logging_model(click_store, tiny_model, tiny_fashion, tmp_path):
    """``logging_model``: the served model's scores join the direct method; a model that served nothing is refused."""
    import shutil

    from fixtures_fashion import tiny_config_dict
    from fusionrank.errors import FusionrankError
    from fusionrank.experiment import ExperimentConfig, train
    from fusionrank.modeldir import ModelDir

    def config(model):
        return ExperimentConfig.model_validate(tiny_config_dict(
            tiny_fashion.root, loss={"name": "ips_listwise", "args": {}},
            events={"store": str(click_store), "labels": "dr", "logging_model": str(model)}))

    metrics = train(config(tiny_model[0]), tmp_path / "m", log=lambda m: None, progress=False, build_index=False)
    assert metrics["clicks"]["logging_model"] == {"version": ModelDir.open(tiny_model[0]).version(), "share_of_searches": 1.0,
                                                 "rewritten": True}
    assert metrics["dev/title"]["ndcg@10"] > 0.2
    other = tmp_path / "other"
    shutil.copytree(tiny_model[0], other)
    (other / "ranker" / "note.txt").write_text("another version")
    with pytest.raises(FusionrankError, match="served none of the logged searches"):
        train(config(other), tmp_path / "m2", log=lambda m: None, progress=False, build_index=False)


def test_logging_model_with_query_understanding_is_checked_and_scored_as_it_served(tiny_model, tiny_fashion, tmp_path):
    """Searches whose words the served model's understanding rewrote ("crimson shirt" -> "red tshirt").

    Training recomputes the verbatim query's candidates (what the new model will serve: its
    understanding is built from these texts); the skew check and the direct method's logging scores
    use the rewritten query's slates, as the logging model ranked them, so the check finds no skew.
    """
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig, train
    from fusionrank.serving.build import open_service

    svc = open_service(tiny_model[0], data_dir=tmp_path / "service-data", randomise_share=0.0, log=lambda m: None)
    rewritten = 0
    for i in range(60):
        for q in ("crimson shirt", "ebony tee", "sneakers for men", "azure shoes", "navy trainers", "black tshirt"):
            r = svc.search(q, k=8)
            rewritten += r["understood"]["rewritten"] != q
            hit = r["results"][i % 3]
            svc.record_events([{"type": "click", "search_id": r["search_id"], "model_version": svc.model.version,
                                "product_id": hit["product_id"], "position": i % 3 + 1}])
    svc.close()
    assert rewritten == 300

    from fusionrank.feedback.bias import PositionBias

    PositionBias(1.0 / np.arange(1, 9)).save(tmp_path / "theta.json")  # a known bias: this log has no swaps to estimate one

    def clicks(logging_model):
        events = {"store": str(tmp_path / "service-data" / "events.sqlite"), "labels": "dr",
                  "propensity": str(tmp_path / "theta.json"), **({"logging_model": str(tiny_model[0])} if logging_model else {})}
        cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, loss={"name": "ips_listwise", "args": {}},
                                                               events=events))
        return train(cfg, tmp_path / f"m{int(logging_model)}", log=lambda m: None, progress=False, build_index=False)["clicks"]

    with_model, verbatim = clicks(True), clicks(False)
    assert with_model["logging_model"]["rewritten"] is True
    assert with_model["skew"]["products_checked"] > 0 and with_model["skew"]["max_abs_difference"] == 0.0
    assert verbatim["skew"]["max_abs_difference"] > 0.0  # the verbatim queries' features are not what was served
