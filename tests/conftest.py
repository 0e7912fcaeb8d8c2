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
