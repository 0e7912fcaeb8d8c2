"""The modality specification: what each modality contributes to ranking, defined once.

Every layer (the catalogue tables, the candidate generator, the feature builder, the
rankers' feature groups, the serving index, the explanations) reads :data:`MODALITIES`
instead of naming tables, fields or mask columns itself.

============  ==========  =====================  ==============  ==========================================
modality      table       store feature           lexical field   scalar features (in this order)
============  ==========  =====================  ==============  ==========================================
text          title       ``<title field>.<text   title           bm25_title, bm25_title_mm, overlap_title,
                          encoder>``                              cos_title, colour_match
image         image_proj  ``image_proj.<title     (none)          cos_image, cos_image_mm
                          field>`` (``.<text
                          encoder>`` for one
                          derived from another)
audio         transcript  ``transcript.<text      transcript      bm25_transcript, bm25_transcript_mm,
                          encoder>``                              overlap_transcript, cos_transcript
============  ==========  =====================  ==============  ==========================================

A modality's *mask index* is its position in :data:`MODALITIES`. ``*_mm`` features are
per-slate min-max normalisations of another feature, over the candidates that have the
modality. The transcript text itself comes from the store feature ``audio.<transcriber>``.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import schema as S
from .errors import FusionrankError, UnknownNameError


@dataclass(frozen=True)
class Modality:
    name: str
    table: str                      # embedding table the ranker reads (query ⊙ embedding interactions)
    features: tuple[str, ...]       # scalar features, in column order
    cosine: str                     # the feature that holds cos(query, table row)
    lexical: str | None = None      # BM25 field: feeds bm25_<field> and overlap_<field>
    minmax: tuple[str, str] | None = None  # (source feature, its per-slate min-max feature)
    required: bool = False          # every product must have it (the title)

    @property
    def lexical_features(self) -> tuple[str, ...]:
        """The features computed from the lexical field (BM25, its min-max, term overlap): what a query word
        the field does not contain leaves at zero."""
        if not self.lexical:
            return ()
        names = {f"bm25_{self.lexical}", f"overlap_{self.lexical}"}
        if self.minmax and self.minmax[0] in names:
            names.add(self.minmax[1])
        return tuple(f for f in self.features if f in names)

    @property
    def index(self) -> int:
        """The mask column of this modality."""
        return MODALITY_NAMES.index(self.name)

    def store_feature(self, title_field: str, text_encoder: str) -> str:
        """The embedding store feature that fills this modality's table."""
        if self.table == "title":
            return f"{title_field}.{text_encoder}"
        if self.table == "image_proj":  # photos projected into the text encoder's space
            from .encoders import base_encoder

            base = f"image_proj.{title_field}"
            # an encoder that maps its base's space (minilm_adapter) maps the base's projected photos too
            return base if base_encoder(text_encoder) is None else f"{base}.{text_encoder}"
        return f"{TRANSCRIPT}.{text_encoder}"


TRANSCRIPT = "transcript"
# the product has the colour the query asks for: 1 where its title states it, the photo colour head's probability
# where its title states no colour, 0 otherwise or for a query without a colour (:mod:`fusionrank.encoders.attributes`)
COLOUR_MATCH = "colour_match"

MODALITIES: tuple[Modality, ...] = (
    Modality("text", "title", ("bm25_title", "bm25_title_mm", "overlap_title", "cos_title", COLOUR_MATCH), "cos_title",
             lexical="title", minmax=("bm25_title", "bm25_title_mm"), required=True),
    Modality("image", "image_proj", ("cos_image", "cos_image_mm"), "cos_image", minmax=("cos_image", "cos_image_mm")),
    Modality("audio", "transcript", ("bm25_transcript", "bm25_transcript_mm", "overlap_transcript", "cos_transcript"),
             "cos_transcript", lexical="transcript", minmax=("bm25_transcript", "bm25_transcript_mm")),
)
MODALITY_NAMES: tuple[str, ...] = tuple(m.name for m in MODALITIES)
TABLES: tuple[str, ...] = tuple(m.table for m in MODALITIES)
# per-product tables that are no modality's: the colour evidence per colour class (title or photo), read by the
# feature builder for COLOUR_MATCH; the catalogue stores, logs and snapshots them beside the modality tables
COLOUR_TABLE = "colour"
ATTRIBUTE_TABLES: tuple[str, ...] = (COLOUR_TABLE,)
CATALOG_TABLES: tuple[str, ...] = TABLES + ATTRIBUTE_TABLES
LEXICAL_FIELDS: tuple[str, ...] = tuple(m.lexical for m in MODALITIES if m.lexical)
SCALAR_FEATURES: tuple[str, ...] = tuple(f for m in MODALITIES for f in m.features)
FEATURE_COLUMN: dict[str, int] = {f: j for j, f in enumerate(SCALAR_FEATURES)}
# the scalar features of earlier versions, by their count, for models saved before a model directory recorded its
# features' names (``features.json``): such a model reads its own columns, by name, out of today's slates. A change
# to SCALAR_FEATURES adds the set it replaces here (two sets of one width cannot both be here: record names instead)
EARLIER_FEATURE_SETS: dict[int, tuple[str, ...]] = {
    10: tuple(f for f in SCALAR_FEATURES if f != COLOUR_MATCH),  # before colour_match
}


def feature_set(width: int) -> tuple[str, ...]:
    """The scalar features, in column order, of slates ``width`` columns wide: today's, or an earlier set's."""
    if width == len(SCALAR_FEATURES):
        return SCALAR_FEATURES
    if width in EARLIER_FEATURE_SETS:
        return EARLIER_FEATURE_SETS[width]
    raise FusionrankError(f"no feature set of fusionrank has {width} scalar features (today's has {len(SCALAR_FEATURES)}: "
                          f"{', '.join(SCALAR_FEATURES)}; earlier ones: {', '.join(map(str, sorted(EARLIER_FEATURE_SETS)))})")


def modality(name: str) -> Modality:
    for m in MODALITIES:
        if m.name == name:
            return m
    raise UnknownNameError("modality", name, list(MODALITY_NAMES))


def transcript_feature(transcriber: str) -> str:
    """The store feature holding the transcripts of the audio clips."""
    return f"{S.AUDIO}.{transcriber}"
