"""Small hyperparameter search with Optuna (TPE) over learning rate, dropout, fusion method and loss.

Slates are built once; each trial trains a ranker from the experiment config with the
trial's choices and is scored by validation NDCG@10 (held-out training queries, never
the evaluation split). Writes ``trials.csv`` and ``best.json`` (the best config) to OUT.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .adaptation import TEXT_ENCODER_DIR, fit_text_encoder
from .experiment import ExperimentConfig, ideal_for, prepare_training, training_data
from .fusion import FUSIONS
from .losses import LOSSES
from .ranking import feature_groups

DEFAULT_SPACE: dict[str, Any] = {
    "lr": [3e-4, 1e-2],
    "dropout": [0.0, 0.3],
    "fusion": FUSIONS.names(),
    "loss": ["lambdaloss", "listnet", "ranknet"],
}


def tune(config: ExperimentConfig, out_dir: str | Path, n_trials: int = 12, space: dict[str, Any] | None = None,
         config_path: Path | None = None, log=print, timeout: float | None = None) -> dict[str, Any]:
    import optuna

    space = {**DEFAULT_SPACE, **(space or {})}
    for f in space["fusion"]:
        FUSIONS.get(f)  # unknown names fail before any work, listing the valid ones
    for name in space["loss"]:
        LOSSES.get(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, ws, cat, _, tq, vq = prepare_training(config, config_path, log, progress=False)
    config = fit_text_encoder(config, cat.products, ws.store_dir, tq, vq, cat.qrels, out / TEXT_ENCODER_DIR, log)
    train_sl, valid_sl, tables, _ = training_data(cat.products, ws.store_dir, config, tq, vq, cat.qrels, log)
    ideal = ideal_for(valid_sl, cat.qrels)
    groups = feature_groups(config.modalities)

    def objective(trial: "optuna.Trial") -> float:
        c = config.model_copy(deep=True)
        c.optimizer.args = {**c.optimizer.args, "lr": trial.suggest_float("lr", *space["lr"], log=True)}
        c.scorer.args = {**c.scorer.args, "dropout": trial.suggest_float("dropout", *space["dropout"])}
        c.fusion.name = trial.suggest_categorical("fusion", list(space["fusion"]))
        loss = trial.suggest_categorical("loss", list(space["loss"]))
        if loss != c.loss.name:
            c.loss.name, c.loss.args = loss, {}
        t0 = time.perf_counter()
        r = c.build_ranker()
        r.fit(train_sl, groups, tables, valid=valid_sl, valid_ideal_dcg=ideal, log=None)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        score = float(r.best_valid_ndcg_ or 0.0)
        log(f"  trial {trial.number}: {trial.params} -> valid ndcg@10 {score:.4f} ({trial.user_attrs['seconds']} s)")
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    trials = study.trials_dataframe()
    trials.to_csv(out / "trials.csv", index=False)
    best = config.model_copy(deep=True)
    p = study.best_params
    best.optimizer.args = {**best.optimizer.args, "lr": p["lr"]}
    best.scorer.args = {**best.scorer.args, "dropout": p["dropout"]}
    best.fusion.name = p["fusion"]
    if p["loss"] != best.loss.name:
        best.loss.name, best.loss.args = p["loss"], {}
    result = {"best_value": study.best_value, "best_params": p, "trials": len(study.trials), "best_config": best.model_dump()}
    (out / "best.json").write_text(json.dumps(result, indent=2))
    return result
