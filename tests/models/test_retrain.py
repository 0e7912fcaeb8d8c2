"""`fusionrank retrain` and `fusionrank models ...` on the tiny model: a candidate from logged clicks, measured beside its parent."""
from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from fusionrank.cli import app
from fusionrank.errors import FusionrankError


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def shop(tiny_model, tiny_fashion, tmp_path_factory):
    """A service over the tiny model; 600 simulated PBM sessions, then (after ``t_mid``) 1,500 more of which the service
    randomises a fifth (its top result swapped with one of ranks 2..8). Returns (store path, t_mid)."""
    from fusionrank.feedback.clickmodels import PositionBased, PowerLawExamination
    from fusionrank.feedback.simulate import Shoppers
    from fusionrank.serving.build import open_service

    data = tmp_path_factory.mktemp("shop") / "service-data"
    svc = open_service(tiny_model[0], data_dir=data, log=lambda m: None)
    clicks = PositionBased(PowerLawExamination(1.0))
    Shoppers(tiny_fashion.queries["train"], tiny_fashion.qrels["train"], clicks, k=8, seed=0).run_cached(svc, 600, log=None)
    time.sleep(0.01)
    t_mid = time.time()
    svc.randomise_share = 0.2
    Shoppers(tiny_fashion.queries["train"], tiny_fashion.qrels["train"], clicks, k=8, seed=1).run_cached(svc, 1500, log=None)
    svc.close()
    return data / "events.sqlite", t_mid


def test_retrain_registers_a_candidate_measured_beside_its_parent(shop, tiny_model, tmp_path):
    from fusionrank.models import ModelRegistry

    store, t_mid = shop
    runner = CliRunner()
    reg_dir = tmp_path / "reg"
    ok(runner.invoke(app, ["models", "init", str(reg_dir), "--tolerance", "0.01"]))
    ok(runner.invoke(app, ["models", "add", str(reg_dir), str(tiny_model[0]), "--note", "judged start"]))
    r = ok(runner.invoke(app, ["retrain", "--registry", str(reg_dir), "--store", str(store), "--since", str(t_mid),
                               "--epochs", "2", "--judgments-weight", "0.5"]))
    assert "registered v2" in " ".join(r.stderr.split())

    reg = ModelRegistry.open(reg_dir)
    idx = reg.read()
    v1, v2 = idx.find("v1"), idx.find("v2")
    assert (v1.state, v2.state, v2.parent) == ("promoted", "candidate", "v1")
    assert v1.training_data["judgments"]["queries"] == tiny_model[1]["train_queries"] and v1.note == "judged start"
    ev = v2.training_data["events"]
    assert ev["searches"] == 1500 and ev["since"] == pytest.approx(t_mid) and ev["first_search"] >= t_mid  # only the later ones
    assert ev["labels"] == "ips" and ev["propensity"] == "swaps" and v2.training_data["judgments"]["weight"] == 0.5
    # the position bias came from the randomised searches of the whole store (before and after t_mid), not theta = 1
    assert ev["propensity_log"]["searches"] == 2100 and 200 < ev["propensity_log"]["randomised"] < 400
    assert ev["theta"][0] == 1.0 and len(ev["theta"]) == 8 and min(ev["theta"][1:]) < 0.9
    assert v2.config["events"]["since"] == pytest.approx(t_mid) and v2.config["loss"]["name"] == "ips_listwise"
    assert v2.config["scorer"] == v1.config["scorer"] and v2.config["fusion"] == v1.config["fusion"]  # on top of v1's config
    off = v2.offline
    assert off["split"] == "dev" and off["queries"] == 8 and off["baseline"] == "v1"
    assert off["baseline_model_version"] == v1.model_version
    assert off["baseline_metrics"]["ndcg@10"] == pytest.approx(tiny_model[1]["dev/title"]["ndcg@10"], abs=1e-9)
    assert 0 < off["metrics"]["ndcg@10"] <= 1
    assert reg.model_path(v2) == reg_dir / "versions" / "v2" and not (reg.model_path(v2) / "index").exists()

    # the CLI shows it; a promotion without interleaving evidence is refused and recorded
    ok(runner.invoke(app, ["models", "list", str(reg_dir)]))
    listing = json.loads(ok(runner.invoke(app, ["models", "list", str(reg_dir), "--json"])).stdout)
    assert [(v["id"], v["state"]) for v in listing] == [("v1", "promoted"), ("v2", "candidate")]
    assert listing[1]["training_data"] == v2.training_data and "config" not in listing[1]
    shown = json.loads(ok(runner.invoke(app, ["models", "show", str(reg_dir), "v2"])).stdout)
    assert shown["offline"] == off and [d["action"] for d in shown["decisions"]] == ["register"]
    r = runner.invoke(app, ["models", "promote", str(reg_dir), "v2", "--store", str(store)])
    assert r.exit_code == 1 and "no credited interleaved searches" in " ".join(r.stderr.split())
    assert reg.read().decisions[-1].action == "refuse" and reg.read().promoted().id == "v1"
    r = ok(runner.invoke(app, ["interleave", "report", "--store", str(store), "--json"]))
    assert json.loads(r.stdout) == []
    r = runner.invoke(app, ["models", "show", str(reg_dir), "v7"])
    assert r.exit_code == 2 and "versions: v1, v2" in " ".join(r.stderr.split())


def test_retrain_without_searches_in_range_says_so(shop, tiny_model, tmp_path):
    from fusionrank.errors import FusionrankError
    from fusionrank.models import ModelRegistry
    from fusionrank.models.retrain import retrain

    reg = ModelRegistry.create(tmp_path / "reg")
    reg.register(tiny_model[0])
    with pytest.raises(FusionrankError, match="no logged searches to train from since"):
        retrain(reg, str(shop[0]), since=time.time() + 60, log=lambda m: None)
    assert [p.name for p in (tmp_path / "reg" / "versions").iterdir()] == []  # the allocated directory is removed again


def test_retrain_names_what_is_valid(shop, tiny_model, tmp_path):
    from fusionrank.errors import FusionrankError
    from fusionrank.models import ModelRegistry, RegistryError
    from fusionrank.models.retrain import retrain

    reg = ModelRegistry.create(tmp_path / "reg")
    with pytest.raises(RegistryError, match="no promoted version to retrain from; register one with `fusionrank models add"):
        retrain(reg, str(shop[0]), log=lambda m: None)
    reg.register(tiny_model[0])
    with pytest.raises(FusionrankError, match="click labeler 'ipx'; valid names: affine, dr, ips, naive"):
        retrain(reg, str(shop[0]), labels="ipx", log=lambda m: None)
    with pytest.raises(FusionrankError, match="unknown loss 'listwize'; valid names: .*ips_listwise"):
        retrain(reg, str(shop[0]), loss="listwize", log=lambda m: None)
    assert list((tmp_path / "reg" / "versions").iterdir()) == []


def test_retrain_refuses_a_position_bias_the_log_does_not_identify(shop, tiny_model, tmp_path):
    """Before t_mid one model logged every search unrandomised: neither swaps nor per-pair EM can tell the ranks apart."""
    from fusionrank.feedback.propensity import InsufficientInterventionsError
    from fusionrank.models import ModelRegistry
    from fusionrank.models.retrain import retrain

    reg = ModelRegistry.create(tmp_path / "reg")
    reg.register(tiny_model[0])
    store, t_mid = shop
    with pytest.raises(InsufficientInterventionsError, match="no randomised swaps of rank 1.*--randomise-share") as e:
        retrain(reg, str(store), until=t_mid, log=lambda m: None)
    assert e.value.missing_ranks == list(range(2, 9))
    with pytest.raises(InsufficientInterventionsError, match=r"em: rank\(s\) \[2, .*8\] share no user_query / product_id"):
        retrain(reg, str(store), until=t_mid, propensity="em", log=lambda m: None)
    with pytest.raises(FusionrankError, match="(?s)propensity_searches.*'all' or 'training'"):
        retrain(reg, str(store), propensity_searches="everything", log=lambda m: None)
    assert list((tmp_path / "reg" / "versions").iterdir()) == []
    # the randomised searches after t_mid identify it, also when only the searches trained on are read
    v = retrain(reg, str(store), since=t_mid, propensity_searches="training", epochs=1, log=lambda m: None)
    ev = v.training_data["events"]
    assert ev["propensity_log"]["searches"] == 1500 and ev["theta"][0] == 1.0 and min(ev["theta"][1:]) < 0.9


def test_retrain_with_doubly_robust_labels_reads_the_logging_models_scores(shop, tiny_model, tmp_path):
    from fusionrank.modeldir import ModelDir
    from fusionrank.models import ModelRegistry
    from fusionrank.models.retrain import retrain

    reg = ModelRegistry.create(tmp_path / "reg")
    reg.register(tiny_model[0])
    v = retrain(reg, str(shop[0]), since=shop[1], labels="dr", logging_model=str(tiny_model[0]), dm_regressor="ridge",
                epochs=1, log=lambda m: None)
    ev = v.training_data["events"]
    assert ev["labels"] == "dr" and v.config["events"]["dm_regressor"] == "ridge"
    assert ev["logging_model"] == {"version": ModelDir.open(tiny_model[0]).version(), "share_of_searches": 1.0, "rewritten": True}
    with pytest.raises(FusionrankError, match="direct-method regressor 'forest'; valid names"):
        retrain(reg, str(shop[0]), labels="dr", dm_regressor="forest", log=lambda m: None)


def test_retrain_rebuilds_the_slates_of_the_index_that_served(tiny_model, tiny_fashion, tmp_path):
    """The serving index retrieves 12 candidates where the model's config says 20: retraining from its searches
    rebuilds them with the index's settings (the features the shoppers were shown, nothing left out); with the
    config's settings the min-max features of the same products differ."""
    import shutil

    from fusionrank.feedback.clickmodels import PositionBased, PowerLawExamination
    from fusionrank.feedback.simulate import Shoppers
    from fusionrank.models import ModelRegistry
    from fusionrank.models.retrain import retrain
    from fusionrank.serving.build import open_service

    served = tmp_path / "served"
    shutil.copytree(tiny_model[0], served)
    meta = json.loads((served / "index" / "index.json").read_text())
    meta["config"]["candidates"].update(n=12, depth=12)
    (served / "index" / "index.json").write_text(json.dumps(meta))
    svc = open_service(served, data_dir=tmp_path / "data", randomise_share=0.3, log=lambda m: None)
    assert svc.index.config.candidates.n == 12
    Shoppers(tiny_fashion.queries["train"], tiny_fashion.qrels["train"], PositionBased(PowerLawExamination(1.0)), k=8,
             seed=2).run_cached(svc, 800, log=None)
    svc.close()
    store = str(tmp_path / "data" / "events.sqlite")

    unindexed = tmp_path / "unindexed"  # the same model without its index: retraining falls back on the config
    shutil.copytree(served, unindexed, ignore=shutil.ignore_patterns("index"))
    events = {}
    for name, parent in (("index", served), ("config", unindexed)):
        reg = ModelRegistry.create(tmp_path / f"reg-{name}")
        reg.register(parent)
        v = retrain(reg, store, epochs=1, log=lambda m: None)
        events[name] = v.training_data["events"]
    assert events["index"]["index"] == str(served / "index") and events["config"]["index"] is None
    assert events["index"]["skew"]["max_abs_difference"] < 1e-5 and events["index"]["impressions_left_out"] == 0
    assert events["config"]["skew"]["max_abs_difference"] > 1e-3
    assert events["index"]["searches"] == events["config"]["searches"] == 800
