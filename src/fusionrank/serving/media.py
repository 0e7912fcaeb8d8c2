"""Where a product's photo and clip may come from, and what ``GET /products/{id}/image|audio`` sends back.

A media path given to ``PUT /products/{id}`` must resolve (symlinks followed) to a
regular, readable file under an allowed root: the folders of the catalogue's own media,
plus ``FUSIONRANK_UPLOAD_ROOTS``. A relative path is looked up under each root in turn.
Anything else (``..`` out of a root, an absolute path elsewhere, a URL, a missing or
unreadable file) gets the same answer, which names neither the path nor the reason, so
it cannot be used to probe which files exist.

What is served is never the file as it lies on disk: the photo is decoded with Pillow
and re-encoded (JPEG stays JPEG, anything else becomes PNG), the clip is decoded with
soundfile and re-encoded (Ogg Vorbis and FLAC keep their format, anything else becomes
WAV). Bytes hidden after the image data, or a file that is not an image or clip at all,
are never sent. The path is checked against the roots again at each request.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

__all__ = ["MediaRoots", "MediaError", "folders_of", "image_bytes", "audio_bytes", "MAX_MEDIA_BYTES"]

MAX_MEDIA_BYTES = 50 * 1024 * 1024
MAX_AUDIO_SECONDS = 600


class MediaError(ValueError):
    """A media file that may not or cannot be used; the message never contains the path."""


class MediaRoots:
    """The folders media may come from (resolved); :meth:`resolve` maps a given path to an allowed file or refuses."""

    def __init__(self, roots: Iterable[str | Path]):
        seen: dict[str, Path] = {}
        for r in roots:
            try:
                p = Path(r).expanduser().resolve()
            except (OSError, RuntimeError):
                continue
            if p.is_dir() and p != Path(p.anchor):  # never the whole file system
                seen.setdefault(str(p), p)
        self.roots = list(seen.values())

    @classmethod
    def of_paths(cls, media_paths: Iterable[object], extra: Iterable[str | Path] = ()) -> "MediaRoots":
        """Roots from the folders holding existing media files (the catalogue's), plus ``extra``."""
        parents: set[str] = set()
        for v in media_paths:
            if isinstance(v, str) and v and "://" not in v:
                parents.add(os.path.dirname(os.path.abspath(v)))
        return cls([*sorted(parents), *extra])

    def allowed(self, path: Path) -> bool:
        return any(path == r or path.is_relative_to(r) for r in self.roots)

    def resolve(self, raw: str) -> Path:
        """The real file ``raw`` names, if it is a readable regular file under a root; else :class:`MediaError`."""
        refuse = MediaError("not a readable media file in an allowed media folder")
        if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
            raise refuse
        p = raw[7:] if raw.startswith("file://") else raw
        if "://" in p:
            raise MediaError("only local files can be indexed, from an allowed media folder (not URLs)")
        given = Path(p)
        candidates = [given] if given.is_absolute() else [r / given for r in self.roots]
        for c in candidates:
            try:
                real = c.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if self.allowed(real) and real.is_file() and os.access(real, os.R_OK):
                return real
        raise refuse


def folders_of(catalog) -> list[str]:
    """The folders holding a catalogue's photos and clips (:meth:`~fusionrank.ranking.catalog.CatalogTables.media_paths`)."""
    return [str(r) for r in MediaRoots.of_paths(catalog.media_paths()).roots]


class _Cache:
    """Re-encoded media by ``(path, size, mtime)``: a photo is decoded once, not at every page view."""

    def __init__(self, max_items: int = 256):
        self.items: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self.max_items = max_items
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.items.get(key)
            if v is not None:
                self.items.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            if len(self.items) > self.max_items:
                self.items.popitem(last=False)


_cache = _Cache()


def _key(path: Path, kind: str):
    st = path.stat()
    if st.st_size > MAX_MEDIA_BYTES:
        raise MediaError(f"{kind} file is larger than {MAX_MEDIA_BYTES // (1024 * 1024)} MiB")
    return (kind, str(path), st.st_size, st.st_mtime_ns)


def _reencoded(path: Path, kind: str, decode) -> tuple[bytes, str]:
    """``decode(path)`` -> ``(bytes, content type)``, cached by path, size and mtime; any decoder failure is one :class:`MediaError`."""
    try:
        key = _key(path, kind)
        hit = _cache.get(key)
        if hit:
            return hit
        value = decode(path)
    except MediaError:
        raise
    except Exception:  # noqa: BLE001 - whatever the decoder raises, the answer is the same
        raise MediaError(f"cannot decode the file as {'an image' if kind == 'image' else 'an audio clip'}") from None
    _cache.put(key, value)
    return value


def _image(path: Path) -> tuple[bytes, str]:
    from PIL import Image

    with Image.open(path) as im:
        fmt = im.format
        im.load()  # full decode: a truncated or corrupt image fails here
        if im.width < 1 or im.height < 1:
            raise MediaError("the image has no pixels")
        out = io.BytesIO()
        if fmt == "JPEG":
            im = im if im.mode in ("RGB", "L", "CMYK") else im.convert("RGB")
            im.save(out, "JPEG", quality=92)
            return out.getvalue(), "image/jpeg"
        if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            im = im.convert("RGBA")
        im.save(out, "PNG")
        return out.getvalue(), "image/png"


def _audio(path: Path) -> tuple[bytes, str]:
    import soundfile as sf

    info = sf.info(str(path))
    if info.duration > MAX_AUDIO_SECONDS:
        raise MediaError(f"the clip is longer than {MAX_AUDIO_SECONDS} s")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # whole clip: a cut-off one fails
    if data.shape[0] == 0:
        raise MediaError("the clip has no samples")
    out = io.BytesIO()
    if info.format == "OGG":
        sf.write(out, data, sr, format="OGG", subtype="VORBIS")
        return out.getvalue(), "audio/ogg"
    if info.format == "FLAC":
        sf.write(out, data, sr, format="FLAC")
        return out.getvalue(), "audio/flac"
    sf.write(out, data, sr, format="WAV", subtype="PCM_16")
    return out.getvalue(), "audio/wav"


def image_bytes(path: Path) -> tuple[bytes, str]:
    """``(bytes, content type)`` of the photo decoded and re-encoded; :class:`MediaError` if it is not a whole image."""
    return _reencoded(path, "image", _image)


def audio_bytes(path: Path) -> tuple[bytes, str]:
    """``(bytes, content type)`` of the whole clip decoded and re-encoded; :class:`MediaError` otherwise."""
    return _reencoded(path, "audio", _audio)
