"""A tiny synthetic dataset in the fashion44k layout, for experiment/pipeline/CLI tests.

120 products = 3 brands x 5 colours x 4 article types x 2 genders, titled like
fashion44k ("Nike Men Black Tshirt"). ``title_sparse`` drops the colour word for
every even product. Photos are real JPEGs drawn with PIL whose pixels are the
colour the title names (one shape per article type); every 12th product has no
photo. Every 3rd product has a spoken-description clip (a real OGG tone) that the
tests usually leave untranscribed. Queries name attributes ("black tshirt",
"nike men tshirt"); grades come from the attributes: the article type must match,
then 3 = every other named attribute matches, 2 = some do, 1 = none do.

(There must be >= 100 (title, photo) pairs: the image->text projection is skipped
below that, and the image modality would then be absent everywhere.)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BRANDS = ("Nike", "Puma", "Adidas")
COLOURS = {"Black": (15, 15, 15), "Red": (220, 20, 30), "Blue": (20, 40, 210), "Green": (20, 170, 50), "Yellow": (240, 220, 20)}
ARTICLES = {"Tshirt": "Apparel", "Jeans": "Apparel", "Shoes": "Footwear", "Watch": "Accessories"}
GENDERS = ("Men", "Women")

DEV_QUERIES = ("black tshirt", "nike men tshirt", "red shoes", "puma women watch", "blue jeans", "women shoes",
               "adidas men jeans", "green watch")
N_TRAIN_QUERIES = 24


@dataclass
class TinyFashion:
    root: Path
    attrs: pd.DataFrame          # product_id, brand, colour, article, gender, category, has_image, has_audio, title, title_sparse
    queries: dict[str, pd.DataFrame]   # split -> query_id, query
    qrels: dict[str, pd.DataFrame]     # split -> query_id, product_id, grade

    def grade(self, query: str, product_id: str) -> int:
        row = self.attrs.set_index("product_id").loc[str(product_id)]
        return grade_of(parse_query(query), row)


def parse_query(q: str) -> dict[str, str]:
    want = {}
    for tok in q.split():
        t = tok.capitalize()
        if t in BRANDS:
            want["brand"] = t
        elif t in COLOURS:
            want["colour"] = t
        elif t in ARTICLES:
            want["article"] = t
        elif t in GENDERS:
            want["gender"] = t
        else:
            raise ValueError(f"unknown query word {tok!r}")
    assert "article" in want, q
    return want


def grade_of(want: dict[str, str], p) -> int:
    if p["article"] != want["article"]:
        return 0
    others = [k for k in want if k != "article"]
    hit = sum(p[k] == want[k] for k in others)
    return 3 if hit == len(others) else (2 if hit else 1)


def draw_photo(path: Path, colour: tuple[int, int, int], article: str, size=(48, 64)) -> Path:
    """A real JPEG: a shape per article type, filled with the colour, on white (as product photos are)."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    if article == "Tshirt":
        d.polygon([(4, 10), (16, 4), (32, 4), (44, 10), (40, 22), (36, 20), (36, 60), (12, 60), (12, 20), (8, 22)], fill=colour)
    elif article == "Jeans":
        d.polygon([(10, 4), (38, 4), (42, 60), (27, 60), (24, 24), (21, 60), (6, 60)], fill=colour)
    elif article == "Shoes":
        d.polygon([(2, 30), (20, 30), (30, 40), (46, 44), (46, 52), (2, 52)], fill=colour)
    else:
        d.ellipse([8, 16, 40, 48], fill=colour)
        d.rectangle([18, 2, 30, 62], fill=colour)
    im.save(path, format="JPEG", quality=92)
    return path


def write_tone(path: Path, seconds: float, freq: float) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sr = 16000
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="OGG", subtype="VORBIS")
    return path


def make_tiny_fashion(root: Path, audio: bool = True) -> TinyFashion:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, attrs = [], []
    for i, (brand, colour, article, gender) in enumerate(itertools.product(BRANDS, COLOURS, ARTICLES, GENDERS)):
        pid = str(1000 + i)
        title = f"{brand} {gender} {colour} {article}"
        sparse = f"{brand} {gender} {article}" if i % 2 == 0 else title
        has_image = i % 12 != 5
        has_audio = audio and i % 3 == 0
        if has_image:
            draw_photo(root / "images" / f"{pid}.jpg", COLOURS[colour], article)
        if has_audio:
            write_tone(root / "audio" / f"{pid}.ogg", 0.3, 200.0 + 10 * i)
        rows.append({"product_id": pid, "title": title, "title_sparse": sparse, "master_category": ARTICLES[article],
                     "image": f"images/{pid}.jpg" if has_image else None,
                     "audio": f"audio/{pid}.ogg" if has_audio else None})
        attrs.append({"product_id": pid, "brand": brand, "colour": colour, "article": article, "gender": gender,
                      "category": ARTICLES[article], "has_image": has_image, "has_audio": has_audio,
                      "title": title, "title_sparse": sparse})
    pd.DataFrame(rows).to_parquet(root / "products.parquet", index=False)
    attrs_df = pd.DataFrame(attrs)

    every = [f"{c.lower()} {a.lower()}" for c in COLOURS for a in ARTICLES]
    every += [f"{b.lower()} {g.lower()} {a.lower()}" for b in BRANDS for g in GENDERS for a in ARTICLES]
    every += [f"{g.lower()} {a.lower()}" for g in GENDERS for a in ARTICLES]
    rest = [q for q in every if q not in DEV_QUERIES]
    rng = np.random.default_rng(0)
    train = [rest[j] for j in sorted(rng.choice(len(rest), N_TRAIN_QUERIES, replace=False))]
    queries, qrels = {}, {}
    for split, qs, prefix in (("train", train, "t"), ("dev", list(DEV_QUERIES), "d")):
        qdf = pd.DataFrame({"query_id": [f"{prefix}{j:02d}" for j in range(len(qs))], "query": qs})
        rel = []
        for qid, q in zip(qdf["query_id"], qdf["query"]):
            want = parse_query(q)
            for _, p in attrs_df.iterrows():
                g = grade_of(want, p)
                if g:
                    rel.append({"query_id": qid, "product_id": p["product_id"], "grade": g})
        qrdf = pd.DataFrame(rel)
        qdf.to_csv(root / f"queries_{split}.tsv", sep="\t", index=False)
        qrdf.to_csv(root / f"qrels_{split}.tsv", sep="\t", index=False)
        queries[split], qrels[split] = qdf, qrdf
    return TinyFashion(root, attrs_df, queries, qrels)


NO_AUDIO_ENCODERS = {"transcriber": None, "audio_features": None}


def tiny_config_dict(source: Path, **over) -> dict:
    """A small, fast experiment config (as a dict for ExperimentConfig.model_validate)."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "modalities": ["text", "image", "audio"],
        "data": {"source": str(source), "adapter": "fashion44k", "title_field": "title",
                 "train_title_fields": ["title", "title_sparse"], "train_split": "train", "eval_split": "dev",
                 "valid_fraction": 0.25},
        "encoders": {"text": {"name": "minilm"}, "image": {"name": "efficientnet_lite0", "args": {"resolution": 32}},
                     "projection": {"name": "image_projection", "args": {"epochs": 2}}, **NO_AUDIO_ENCODERS},
        "candidates": {"n": 20, "depth": 20},
        "fusion": {"name": "gated"},
        "scorer": {"name": "mlp", "args": {"hidden": 16, "dropout": 0.1}},
        "loss": {"name": "lambdaloss"},
        "optimizer": {"name": "adam", "args": {"lr": 0.003}},
        "training": {"epochs": 2, "batch_size": 8, "patience": 2},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg
