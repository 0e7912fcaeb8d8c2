"""Checks that a product's photo and audio can actually be decoded.

A product whose media is unreadable keeps its text: by default the bad field is
dropped (the modality becomes missing, with an explicit mask downstream) and the
problem is reported; ``on_bad_media="reject_row"`` rejects the whole row instead.
"""
from __future__ import annotations

import re
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
    try:
        if not p.is_file():
            return f"image file not found: {path}"
        with Image.open(p) as im:
            im.load()  # full decode: catches truncated/corrupt data that verify() misses
            if im.width < 1 or im.height < 1:
                return "image has no pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image unreadable: {type(e).__name__}: {e}"
    except Exception as e:  # e.g. DecompressionBombError: never let one photo end the batch
        return f"image unreadable: {type(e).__name__}: {e}"
    return None


# libsndfile's log of a file whose header promises more sample data than the file holds,
# e.g. "data : 32000 (should be 15978)" for a WAV cut in half
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BLOCK = 1 << 16


def _ogg_problem(p: Path) -> str | None:
    """Why an Ogg file is cut short (None if its pages run to the end and the last one ends the stream).

    A Vorbis/Opus clip cut between pages decodes without error, and its header
    carries no length, so the pages themselves are walked: each page header gives
    its size, and the last page must be complete and carry the end-of-stream flag.
    """
    size = p.stat().st_size
    pos, last_flags = 0, None
    with open(p, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(27)
            if len(head) < 27 or head[:4] != b"OggS":
                return f"audio truncated or corrupt: no Ogg page at byte offset {pos}"
            nseg = head[26]
            table = f.read(nseg)
            if len(table) < nseg:
                return f"audio truncated: the Ogg page at byte offset {pos} is cut short"
            end = pos + 27 + nseg + sum(table)
            if end > size:
                return f"audio truncated: the Ogg page at byte offset {pos} needs {end - pos} bytes, the file has {size - pos}"
            last_flags, pos = head[5], end
    if last_flags is None or not last_flags & 0x04:
        return "audio truncated: the Ogg stream ends without its end-of-stream page"
    return None


def check_audio(path: str) -> str | None:
    """Return ``None`` when the whole clip decodes and is as long as its header says, else a reason.

    Every frame is read (in blocks); a clip is refused when decoding fails, when it
    yields fewer or more frames than the header declares, when the header
    declares more sample data than the file holds (a WAV/AIFF cut short, which
    libsndfile would otherwise read as a shorter clip without complaint), or when
    an Ogg file does not end with a complete end-of-stream page.
    """
    if is_url(path):
        return None
    import soundfile as sf

    p = Path(path)
    try:
        if not p.is_file():
            return f"audio file not found: {path}"
        info = sf.info(str(p))
        if info.duration > MAX_AUDIO_SECONDS:
            return f"audio too long: {info.duration:.0f} s > {MAX_AUDIO_SECONDS:.0f} s"
        m = _SHORT_CHUNK.search(info.extra_info or "")
        if m and int(m.group(2)) > int(m.group(3)):
            return (f"audio truncated: the header declares {m.group(2)} bytes of {m.group(1)} but the file holds "
                    f"{m.group(3)}")
        if info.format == "OGG":
            why = _ogg_problem(p)
            if why:
                return why
        frames = 0
        limit = int(MAX_AUDIO_SECONDS * max(1, info.samplerate)) + _BLOCK
        with sf.SoundFile(str(p)) as f:
            for block in f.blocks(blocksize=_BLOCK, dtype="float32", always_2d=True):
                frames += block.shape[0]
                if frames > limit:
                    return f"audio too long: more than {MAX_AUDIO_SECONDS:.0f} s of samples"
        if frames == 0:
            return "audio has no samples"
        if info.frames > 0 and frames != info.frames:
            return (f"audio truncated: the header declares {info.frames} frames ({info.frames / info.samplerate:.2f} s), "
                    f"{frames} decode ({frames / info.samplerate:.2f} s)")
    except (RuntimeError, sf.LibsndfileError, ValueError, OSError) as e:
        return f"audio unreadable: {type(e).__name__}: {e}"
    except Exception as e:  # never let one clip end the batch
        return f"audio unreadable: {type(e).__name__}: {e}"
    return None
