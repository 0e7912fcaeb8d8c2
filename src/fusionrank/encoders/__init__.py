"""Per-modality encoders, registered by name in :data:`ENCODERS`."""
from .base import ENCODERS, EncodeOutcome, Encoder, ItemError, build_encoder, encode_safely
from . import audio, image, reduce, text  # noqa: F401  (registration)
from .audio import LogMelStats, WhisperTranscriber
from .image import EfficientNetLite0Encoder, ImageTextProjection, fold_of
from .reduce import PCAReducer
from .text import BM25Encoder, MiniLMEncoder, TfidfEncoder

__all__ = ["ENCODERS", "Encoder", "EncodeOutcome", "ItemError", "build_encoder", "encode_safely",
           "MiniLMEncoder", "BM25Encoder", "TfidfEncoder", "EfficientNetLite0Encoder", "ImageTextProjection", "fold_of",
           "WhisperTranscriber", "LogMelStats", "PCAReducer"]

# visual attribute heads and the photo features they read (registration)
from . import attributes  # noqa: E402,F401
from .attributes import ColourHead, ColourHistogram  # noqa: E402

__all__ += ["ColourHead", "ColourHistogram"]
