"""Checks that a product's photo and audio can actually be decoded.

A product whose media is unreadable keeps its text: by default the bad field is
dropped (the modality becomes missing, with an explicit mask downstream) and the
problem is reported; ``on_bad_media="reject_row"`` rejects the whole row instead.
"""
from __future__ import annotations

from pathlib import Path

MAX_AUDIO_SECONDS = 600.0


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "s3://", "gs://"))


def check_image(path: str) -> str | None:
    """Return ``None`` when the image decodes, else a reason."""
    if is_url(path):
        return None  # remote photos are checked when fetched, not at ingest
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(p) as im:
            im.load()  # full decode: catches truncated/corrupt data that verify() misses
            if im.width < 1 or im.height < 1:
                return "image has no pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image unreadable: {type(e).__name__}: {e}"
    return None


def check_audio(path: str) -> str | None:
    """Return ``None`` when the whole clip decodes, else a reason."""
    if is_url(path):
        return None
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        return f"audio file not found: {path}"
    try:
        info = sf.info(str(p))
        if info.duration > MAX_AUDIO_SECONDS:
            return f"audio too long: {info.duration:.0f} s > {MAX_AUDIO_SECONDS:.0f} s"
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            return "audio has no samples"
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError) as e:
        return f"audio unreadable: {type(e).__name__}: {e}"
    return None
