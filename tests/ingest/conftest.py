"""Fixtures for the ingestion tests: tiny media files and the shared ESCI sample."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _shared_data_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("FUSIONRANK_SHARED_DATA"):
        dirs.append(Path(os.environ["FUSIONRANK_SHARED_DATA"]))
    # shared/ lies beside the repository clone (locally and in CI)
    dirs += [REPO.parent / "shared" / "data", Path("/work/shared/data")]
    return dirs


@pytest.fixture(scope="session")
def esci_sample_dir() -> Path:
    for d in _shared_data_dirs():
        p = d / "esci-sample"
        if (p / "sample-data" / "test-sample.parquet").is_file():
            return p
    pytest.skip("shared/data/esci-sample not found")


@pytest.fixture
def make_jpeg():
    """make_jpeg(path, color=(200, 30, 30), size=(12, 16)) -> path of a real JPEG."""
    from PIL import Image

    def _make(path: Path, color=(200, 30, 30), size=(12, 16)) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path, format="JPEG", quality=90)
        return path

    return _make


@pytest.fixture
def make_audio():
    """make_audio(path, seconds=0.5) -> a real OGG Vorbis (or WAV, by suffix) clip of a tone."""
    import soundfile as sf

    def _make(path: Path, seconds: float = 0.5, sr: int = 16000) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * sr), dtype=np.float32) / sr
        x = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        if path.suffix == ".ogg":
            sf.write(str(path), x, sr, format="OGG", subtype="VORBIS")
        else:
            sf.write(str(path), x, sr)
        return path

    return _make


@pytest.fixture
def truncate():
    """truncate(src, dst, keep=0.5): copy the first part of a file (a cut-off download)."""

    def _cut(src: Path, dst: Path, keep: float = 0.5) -> Path:
        data = Path(src).read_bytes()
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        Path(dst).write_bytes(data[: max(1, int(len(data) * keep))])
        return Path(dst)

    return _cut


@pytest.fixture
def read_rejects():
    """read_rejects(out_dir) -> list of the rejects.jsonl lines as dicts."""

    def _read(out_dir: Path) -> list[dict]:
        p = Path(out_dir) / "rejects.jsonl"
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    return _read


def balanced(rep: dict) -> bool:
    return rep["read"] == rep["kept"] + rep["rejected"] + rep["merged_duplicates"] + rep["skipped"]


@pytest.fixture
def assert_balanced():
    """assert_balanced(report): every section satisfies read == kept + rejected + merged + skipped."""

    def _check(report: dict) -> None:
        for part in ("products", "queries", "qrels"):
            assert balanced(report[part]), (part, report[part])

    return _check
