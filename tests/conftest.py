"""Fixtures shared by the encoder, store, engine, encode and CLI tests.

Tiny synthetic media (real JPEG / OGG files written at test time), a native
catalogue builder, and access to real fashion44k clips when ``shared/data`` lies
beside the repository clone (tests that need them skip otherwise).
``tests/ingest/conftest.py`` keeps its own copies of the media fixtures.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

# the PostgreSQL server fixture of the event-store tests (a module, not a second conftest: tests import from `conftest`)
pytest_plugins = ["postgres_fixtures"]

REPO = Path(__file__).resolve().parents[1]


def shared_data_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("FUSIONRANK_SHARED_DATA"):
        dirs.append(Path(os.environ["FUSIONRANK_SHARED_DATA"]))
    dirs += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    return dirs


# Two real spoken descriptions (~3 s each, Ogg Opus 16 kHz) from fashion44k.
REAL_CLIPS = ("10001.ogg", "10005.ogg")


@pytest.fixture(scope="session")
def fashion44k_dir() -> Path:
    for d in shared_data_dirs():
        p = d / "fashion44k"
        if all((p / "audio" / c).is_file() for c in REAL_CLIPS):
            return p
    pytest.skip("shared/data/fashion44k (with audio) not found beside the repository")


@pytest.fixture
def real_clips(fashion44k_dir, tmp_path) -> list[Path]:
    """Copies of two real fashion44k speech clips in tmp_path."""
    out = []
    for c in REAL_CLIPS:
        dst = tmp_path / "real_audio" / c
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fashion44k_dir / "audio" / c, dst)
        out.append(dst)
    return out


def write_jpeg(path: Path, color=(200, 30, 30), size=(24, 32), pattern: int = 0) -> Path:
    """A real JPEG; ``pattern`` adds a deterministic texture so images differ beyond colour."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = color
    if pattern:
        rng = np.random.default_rng(pattern)
        arr = np.clip(arr.astype(int) + rng.integers(-60, 60, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)
    return path


def write_audio(path: Path, seconds: float = 0.5, sr: int = 16000, freq: float = 440.0) -> Path:
    """A real OGG Vorbis (or WAV, by suffix) clip of a tone."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if path.suffix == ".ogg":
        sf.write(str(path), x, sr, format="OGG", subtype="VORBIS")
    else:
        sf.write(str(path), x, sr)
    return path


def truncate_file(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """Copy the first part of a file (a cut-off download)."""
    data = Path(src).read_bytes()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(dst)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_products_jsonl(d: Path, rows: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "products.jsonl"
    p.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    return p


# Test modules get these helpers as fixtures: with several conftest.py files and no
# packages, `from conftest import ...` would pick whichever conftest was imported first.
@pytest.fixture
def make_jpeg():
    """make_jpeg(path, color=(200, 30, 30), size=(24, 32), pattern=0) -> path of a real JPEG."""
    return write_jpeg


@pytest.fixture
def write_products():
    """write_products(dir, rows) -> dir/products.jsonl (None values left out)."""
    return write_products_jsonl


@pytest.fixture(name="read_jsonl")
def read_jsonl_fixture():
    """read_jsonl(path) -> list of dicts."""
    return read_jsonl


@pytest.fixture
def make_audio():
    """make_audio(path, seconds=0.5, sr=16000, freq=440.0) -> a real OGG/WAV tone clip."""
    return write_audio


@pytest.fixture
def truncate():
    """truncate(src, dst, keep=0.5): copy the first part of a file."""
    return truncate_file


TITLES = ["Red cotton t-shirt for men", "Blue denim jeans for women", "Black leather wallet",
          "White running shoes for kids", "Green summer dress", "Brown wool scarf"]
COLORS = [(200, 30, 30), (30, 60, 200), (20, 20, 20), (240, 240, 240), (30, 160, 60), (120, 80, 40)]


@pytest.fixture
def tiny_catalog(tmp_path):
    """tiny_catalog(n=6, audio=(), name="src") -> (source dir, rows) of a native JSONL catalogue.

    Product ``p{i}`` has a title, a ``title_sparse`` attribute (equal to the title
    for even i), a description for i < 2 and a textured photo; ``audio`` is a
    sequence of indices that get a tone clip.
    """

    def _make(n: int = 6, audio=(), name: str = "src"):
        d = tmp_path / name
        rows = []
        for i in range(n):
            r = {"product_id": f"p{i}", "title": TITLES[i % len(TITLES)] + ("" if i < len(TITLES) else f" {i}"),
                 "image": f"img/p{i}.jpg"}
            r["title_sparse"] = r["title"] if i % 2 == 0 else r["title"].split()[-1 if i % 3 else 0].lower() + " item"
            if i < 2:
                r["description"] = f"Product number {i}: a fine {r['title'].lower()}."
            if i in audio:
                r["audio"] = f"snd/p{i}.ogg"
                write_audio(d / "snd" / f"p{i}.ogg", seconds=0.4 + 0.1 * i, freq=220.0 * (i + 1))
            write_jpeg(d / "img" / f"p{i}.jpg", COLORS[i % len(COLORS)], pattern=i + 1)
            rows.append(r)
        write_products_jsonl(d, rows)
        return d, rows

    return _make


# --- a tiny fashion44k-layout dataset, ingested, encoded and trained once per session -------------
# (tests/fixtures_fashion.py builds the data; the fixtures below are shared by tests/ranking,
# tests/serving, test_experiment and test_cli_train.)


@pytest.fixture(scope="session")
def fusionrank_home(tmp_path_factory):
    """An isolated FUSIONRANK_HOME: workspaces (ingested catalogue + embedding store) live here."""
    home = tmp_path_factory.mktemp("fusionrank_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSIONRANK_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory):
    """The tiny dataset (120 products, 24 train / 8 dev queries) as a fashion44k-layout folder."""
    from fixtures_fashion import make_tiny_fashion

    return make_tiny_fashion(tmp_path_factory.mktemp("data") / "tinyfashion")


def _transcript_of(p) -> str:
    return f"this {p['brand'].lower()} {p['article'].lower()} comes in {p['colour'].lower()}"


@pytest.fixture(scope="session")
def tiny_workspace(tiny_fashion, fusionrank_home):
    """(workspace, catalog) of ``tiny_fashion``, encoded with the tiny config's encoders.

    Whisper is not run: the products with a clip get a transcript written into the
    store as if an earlier encode had transcribed them (then embedded by the real
    MiniLM), so the audio modality is present for ~1/3 of the products.
    """
    import torch

    from fixtures_fashion import tiny_config_dict
    from fusionrank.encode import TRANSCRIPT, EncodeSettings, Encoding
    from fusionrank.engine import get_engine
    from fusionrank.experiment import ExperimentConfig
    from fusionrank.workspace import Workspace
    from fusionrank.store import EmbeddingStore, text_hash

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine
    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root))
    ws = Workspace(tiny_fashion.root, "fashion44k")
    cat = ws.catalog(log=lambda m: None)
    ws.encode(cat.products, cfg.encode_settings(), log=lambda m: None, progress=False)
    store = EmbeddingStore(ws.store_dir)
    attrs = tiny_fashion.attrs.set_index("product_id")
    with_audio = [pid for pid in cat.products["product_id"] if attrs.loc[pid, "has_audio"]]
    texts = [_transcript_of(attrs.loc[pid]) for pid in with_audio]
    store.write("audio.whisper_tiny_en", with_audio, [text_hash(t, "fixture") for t in texts], texts=texts,
                meta={"encoder": "whisper_tiny_en", "signature": "fixture", "modality": "audio"})
    run = Encoding(store, get_engine("local"), EncodeSettings(), progress=False)
    run.encode_text_field(cat.products, TRANSCRIPT, values=cat.products["product_id"].map(dict(zip(with_audio, texts))))
    yield ws, cat
    torch.set_num_threads(threads)


def _train_recording_runs(config, out_dir):
    """Train, recording the runs (scores) the freshly trained in-memory ranker gives on the eval split."""
    import fusionrank.experiment as experiment

    runs = {}
    real = experiment.evaluate_pipeline

    def recording(pipe, queries, qrels, *a, **kw):
        res = real(pipe, queries, qrels, *a, **kw)
        runs[pipe.catalog.config.title_field] = res["run"].copy()
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "evaluate_pipeline", recording)
        metrics = experiment.train(config, out_dir, log=lambda m: None, progress=False)
    return metrics, runs


@pytest.fixture(scope="session")
def tiny_model(tiny_workspace, tiny_fashion, tmp_path_factory):
    """(model_dir, metrics, runs): a neural (gated fusion, MLP) model trained on the tiny dataset."""
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig

    out = tmp_path_factory.mktemp("models") / "neural"
    metrics, runs = _train_recording_runs(ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root)), out)
    return out, metrics, runs


@pytest.fixture(scope="session")
def tiny_lgbm_model(tiny_workspace, tiny_fashion, tmp_path_factory):
    """(model_dir, metrics, runs): a LightGBM lambdarank model trained on the tiny dataset."""
    from fixtures_fashion import tiny_config_dict
    from fusionrank.experiment import ExperimentConfig

    scorer = {"name": "lightgbm", "args": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 2,
                                            "early_stopping_rounds": 10, "interaction_dims": 4}}
    cfg = ExperimentConfig.model_validate(tiny_config_dict(tiny_fashion.root, scorer=scorer))
    out = tmp_path_factory.mktemp("models") / "lightgbm"
    metrics, runs = _train_recording_runs(cfg, out)
    return out, metrics, runs


@pytest.fixture(scope="module")
def ray_runtime():
    """A local Ray runtime (2 CPUs) for a test module; ended after it."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # pragma: no cover - someone else's runtime
        pytest.skip("a Ray runtime is already running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
