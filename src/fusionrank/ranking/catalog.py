"""The catalogue storage the ranking path reads: records, embedding tables, BM25 fields, vector search.

:class:`CatalogTables` is the one storage interface of the candidate generator, the
feature builder and the explainer. Products are *rows*:

- ``records[column][row]``: display and filter columns (:data:`RECORD_COLUMNS`);
- ``emb[table][rows]`` and ``emb_mask[table][row]``: one :class:`~fusionrank.ranking.tables.EmbeddingTable`
  per modality (:data:`fusionrank.modalities.TABLES`) and per product attribute (the colour evidence,
  :data:`~fusionrank.modalities.ATTRIBUTE_TABLES`), read as float32 and stored as ``table_dtype``
  (float32 or float16), the mask says whether the product has it;
- ``lex_text[field][row]`` and ``lexical[field]``: the text each BM25 field indexed, and
  the :class:`~fusionrank.ranking.lexical.LexicalField` that scores it;
- ``vectors[table]``: nearest-neighbour search over a table (exact or IVF);
- ``live[row]``: rows of removed or replaced products stay allocated but are never returned.

It has two implementations: this class, built once from an ingested catalogue and its
embedding store (:meth:`CatalogTables.from_store`, what training and evaluation use),
and its subclass :class:`fusionrank.serving.index.SearchIndex`, which adds writes, a
change log and snapshots for the service. Both are read by the same code.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .. import schema as S
from ..errors import FusionrankError, UnknownCategory
from ..modalities import ATTRIBUTE_TABLES, CATALOG_TABLES, COLOUR_TABLE, LEXICAL_FIELDS, MODALITIES, TRANSCRIPT, modality, transcript_feature
from .lexical import LexicalField
from .retrieve import CandidateConfig
from .tables import TABLE_DTYPES, UNIT8, EmbeddingTable
from .vectors import AnnIndex, ExactVectors, RowFilter

INDEXED_TITLE = "indexed_title"  # the title a product is indexed with (depends on the title field)
TRANSCRIPT_TEXT = TRANSCRIPT
RECORD_COLUMNS: tuple[str, ...] = (S.PRODUCT_ID, S.TITLE, INDEXED_TITLE, S.DESCRIPTION, S.BRAND, S.COLOR, S.CATEGORY,
                                   S.IMAGE, S.AUDIO, TRANSCRIPT_TEXT)


class Bm25Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k1: float = Field(1.2, gt=0)
    b: float = Field(0.75, ge=0, le=1)


class VectorConfig(BaseModel):
    """Nearest-neighbour search per table: ``exact`` (a matrix product) or faiss IVF with ``flat``/``sq8`` codes."""

    model_config = ConfigDict(extra="forbid")
    codec: Literal["exact", "flat", "sq8"] = "sq8"
    nprobe: int = Field(64, ge=1)
    nlist: int | None = Field(None, ge=1)


class CatalogConfig(BaseModel):
    """How a catalogue variant is indexed: which title field, the candidate stage, BM25 and vector search."""

    model_config = ConfigDict(extra="forbid")
    title_field: str = S.TITLE
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    bm25: Bm25Config = Field(default_factory=Bm25Config)
    ann: VectorConfig = Field(default_factory=VectorConfig)
    # how the ranker's embedding tables are stored (read as float32 either way): float16 halves their memory
    table_dtype: Literal[tuple(TABLE_DTYPES)] = "float32"  # type: ignore[valid-type]
    # append the colour read from the photo to the indexed title of a product whose title states none
    # (store feature photo_colour.<title field>, `[encoders.attributes]`); off: titles as they are
    photo_attributes: bool = False
    # a colour a product's transcript states counts as colour evidence where its title states none (the model ranks
    # the audio modality); off: titles and photos only
    transcript_attributes: bool = False


def lexical_texts(titles: Sequence[str], descriptions: Sequence[str | None], transcripts: Sequence[str | None],
                  photo_colours: Sequence[str | None] | None = None) -> dict[str, list[str]]:
    """What each BM25 field indexes: the text modality's field holds the title, the colour read from the photo
    (``photo_colours``, the colour head's expansion of a title that states none; when there is one) and the
    description (when there is one), the audio modality's field the transcript."""
    photo = [None] * len(titles) if photo_colours is None else photo_colours
    if len(photo) != len(titles):
        raise FusionrankError(f"lexical_texts: {len(photo)} photo colours for {len(titles)} titles")
    titled = [f"{t} {c}" if c else t for t, c in zip(titles, photo)]
    return {modality("text").lexical: [t if not d else f"{t} {d}" for t, d in zip(titled, descriptions)],
            modality("audio").lexical: [t or "" for t in transcripts]}


def _photo_attribute(store, ids: Sequence[str], title_field: str, feat: str, vectors: bool, log=print
                     ) -> dict[str, Any] | None:
    """``product id -> value`` of the photo attribute store feature ``feat`` (a colour, or its probabilities); None when
    the store's last encode recorded why the head could not be trained (then no product has one).

    A store without the feature is an error naming the command that builds it.
    """
    from ..encode import read_manifest
    from ..encoders.attributes import photo_colour_feature

    if not store.exists(feat):
        skipped = read_manifest(store.root).get("skipped", {})
        why = skipped.get(feat) or skipped.get(photo_colour_feature(title_field))
        if why:
            log(f"no photo colours for {title_field}: {why.get('reason', why)}")
            return None
        raise FusionrankError(f"the embedding store at {store.root} has no {feat!r} feature (photo attributes are on); "
                              f"prepare it with `fusionrank encode CATALOG --store {store.root} --config CONFIG` "
                              f"with [encoders.attributes] in CONFIG")
    if not vectors:
        return store.text_map(feat)
    M, present = store.matrix(feat, list(ids))
    return {p: M[i] for i, p in enumerate(ids) if present[i]}


def photo_colours(store, ids: Sequence[str], title_field: str, log=print) -> list[str | None]:
    """Per product, the colour its photo shows as the store's ``photo_colour.<title field>`` holds it (None where the
    title states a colour, the product has no photo or the head abstained)."""
    from ..encoders.attributes import photo_colour_feature

    m = _photo_attribute(store, ids, title_field, photo_colour_feature(title_field), False, log)
    return [None] * len(ids) if m is None else [m.get(i) or None for i in ids]


def photo_colour_probas(store, ids: Sequence[str], title_field: str, log=print) -> list[np.ndarray | None]:
    """Per product, the photo colour head's probability of every colour class (``photo_colour_proba.<title field>``;
    None where the title states a colour or the product has no photo)."""
    from ..encoders.attributes import photo_colour_proba_feature

    m = _photo_attribute(store, ids, title_field, photo_colour_proba_feature(title_field), True, log)
    return [None] * len(ids) if m is None else [m.get(i) for i in ids]


def colour_table(titles: Sequence[str | None], photo_probas: Sequence[np.ndarray | None] | None = None,
                 transcripts: Sequence[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The colour table of products (:data:`~fusionrank.modalities.COLOUR_TABLE`): per product its
    :func:`~fusionrank.encoders.attributes.colour_evidence` from its indexed title, its transcript and its photo's
    colour probabilities (each optional); ``(float32 [P, C], present [P])`` (unknown rows are zeros)."""
    from ..encoders.attributes import colour_classes, colour_evidence

    photo = [None] * len(titles) if photo_probas is None else photo_probas
    spoken = [None] * len(titles) if transcripts is None else transcripts
    if len(photo) != len(titles) or len(spoken) != len(titles):
        raise FusionrankError(f"colour_table: {len(photo)} photo colour rows and {len(spoken)} transcripts for "
                              f"{len(titles)} titles")
    E = np.zeros((len(titles), len(colour_classes())), np.float32)
    present = np.zeros(len(titles), bool)
    for i, (t, p, a) in enumerate(zip(titles, photo, spoken)):
        v = colour_evidence(t, p, a)
        if v is not None:
            E[i], present[i] = v, True
    return E, present


def storage_of(config: CatalogConfig, table: str) -> str:
    """How ``table`` is stored: ``config.table_dtype``, except the attribute tables (probabilities) of compact
    (float16) tables, stored as :data:`~fusionrank.ranking.tables.UNIT8`, one byte per value."""
    return UNIT8 if table in ATTRIBUTE_TABLES and config.table_dtype == "float16" else config.table_dtype


def _with_attribute_tables(records: dict[str, Sequence], emb: dict[str, np.ndarray], emb_mask: dict[str, np.ndarray],
                           config: CatalogConfig):
    """``emb`` and ``emb_mask`` with the attribute tables the caller did not give, from the records' indexed titles
    (and transcripts, when ``config.transcript_attributes``; photo evidence comes only from the caller:
    :meth:`CatalogTables.from_store`, a product's ``PUT``)."""
    if COLOUR_TABLE in emb:
        return emb, emb_mask
    n = len(records[S.PRODUCT_ID])
    titles = records.get(INDEXED_TITLE)
    titles = records.get(S.TITLE) if titles is None else titles
    spoken = records.get(TRANSCRIPT_TEXT) if config.transcript_attributes else None
    E, present = colour_table(list(titles) if titles is not None else [None] * n, None,
                              list(spoken) if spoken is not None else None)
    return {**emb, COLOUR_TABLE: E}, {**emb_mask, COLOUR_TABLE: present}


class CatalogTables:
    def __init__(self, config: CatalogConfig, dims: dict[str, int]):
        self.config = config
        self.dims = dict(dims)
        self.lock = threading.RLock()
        self.n_rows = 0
        self.cap = 0
        self.records: dict[str, np.ndarray] = {c: np.empty(0, object) for c in RECORD_COLUMNS}
        self.cat_code = np.zeros(0, np.int32)  # per row: code of its lower-cased category (0 = none), for filters
        self._cat_codes: dict[str, int] = {}
        self.lex_text: dict[str, np.ndarray] = {f: np.empty(0, object) for f in LEXICAL_FIELDS}
        self.emb: dict[str, EmbeddingTable] = {t: EmbeddingTable(dims[t], storage_of(config, t)) for t in CATALOG_TABLES}
        self.emb_mask: dict[str, np.ndarray] = {t: np.zeros(0, bool) for t in CATALOG_TABLES}
        self.live = np.zeros(0, bool)
        self.row_of: dict[str, int] = {}
        self.lexical: dict[str, LexicalField] = {}
        self.vectors: dict[str, ExactVectors | AnnIndex] = {}
        self.version = 0  # bumped on every change
        self._filters: dict[str, tuple[int, RowFilter]] = {}
        self._category_names: dict[str, str] = {}  # lower-cased -> as first seen
        self._cat_count: dict[str, int] = {}

    # construction --------------------------------------------------------------
    @classmethod
    def build(cls, records: dict[str, Sequence], lex_texts: dict[str, Sequence[str]], emb: dict[str, np.ndarray],
              emb_mask: dict[str, np.ndarray], config: CatalogConfig | None = None, log=print, like=None,
              part_of: np.ndarray | None = None):
        """Tables over ``P`` products given as columns (``records``), BM25 texts and embedding tables.

        ``like``: tables whose trained parts to share instead of learning them here: the BM25 vocabularies (term
        ids) and the IVF coarse and scalar quantisers. A shard of a split catalogue is built like the whole.
        ``part_of``: with ``like``, the rows of ``like`` these products are (in order): their IVF entries are copied
        from ``like``'s (:meth:`AnnIndex.part <fusionrank.ranking.vectors.AnnIndex.part>`), not encoded again from
        the (possibly float16-rounded) vectors given.
        """
        config = config or CatalogConfig()
        t0 = time.perf_counter()
        P = len(records[S.PRODUCT_ID])
        emb, emb_mask = _with_attribute_tables(records, emb, emb_mask, config)
        self = cls(config, {t: emb[t].shape[1] for t in CATALOG_TABLES})
        for c in RECORD_COLUMNS:
            v = records.get(c)
            self.records[c] = np.asarray(list(v) if v is not None else [None] * P, dtype=object)
        ids = [str(p) for p in self.records[S.PRODUCT_ID]]
        if len(set(ids)) != P:
            raise FusionrankError("duplicate product ids in the index input")
        self.records[S.PRODUCT_ID] = np.asarray(ids, dtype=object)
        self.row_of = {p: i for i, p in enumerate(ids)}
        self.cat_code = self._codes(self.records[S.CATEGORY])
        for f in LEXICAL_FIELDS:
            self.lex_text[f] = np.asarray([t or "" for t in lex_texts[f]], dtype=object)
            self.lexical[f] = LexicalField.build(self.lex_text[f], **config.bm25.model_dump(),
                                                 vocab=None if like is None else like.lexical[f].vocab)
        for t in CATALOG_TABLES:
            self.emb_mask[t] = np.asarray(emb_mask[t], bool).copy()
            self.emb[t] = EmbeddingTable.from_rows(emb[t], self.emb_mask[t], storage_of(config, t))
        self.live = np.ones(P, bool)
        self.n_rows = self.cap = P
        a = config.ann
        for t in self.dense_tables():
            if a.codec == "exact":
                self.vectors[t] = ExactVectors(self, t)
                continue
            rows = np.flatnonzero(self.emb_mask[t])
            t1 = time.perf_counter()
            # codes from the vectors as given (float32), so the candidates do not depend on table_dtype
            if like is not None and isinstance(like.vectors.get(t), AnnIndex):
                if part_of is not None:
                    self.vectors[t] = like.vectors[t].part(part_of)  # the codes ``like`` holds, copied
                else:
                    self.vectors[t] = like.vectors[t].like()
                    if len(rows):
                        self.vectors[t].add(np.asarray(emb[t])[rows], rows)
            else:
                self.vectors[t] = AnnIndex(self.dims[t], a.nlist, a.nprobe, a.codec).build(np.asarray(emb[t])[rows], rows)
            log(f"  ANN {t}: {len(rows):,} vectors, {self.vectors[t].nlist} lists, {time.perf_counter() - t1:.1f} s")
        self._refresh_category_names()
        log(f"catalogue tables: {P:,} products ({self.config.title_field}, {a.codec} vectors, {config.table_dtype} tables) in {time.perf_counter() - t0:.1f} s")
        return self

    @classmethod
    def view(cls, records: dict[str, Sequence], lex_texts: dict[str, Sequence[str]], emb: dict[str, np.ndarray],
             emb_mask: dict[str, np.ndarray], config: CatalogConfig | None = None,
             catalogue_rows: np.ndarray | None = None) -> "CatalogTables":
        """A candidate-only view: the records, BM25 texts and embedding rows of a few products (rows ``0..M-1``),
        without BM25 or vector indexes; ``catalogue_rows[i]``: view row ``i``'s row in the whole catalogue.

        What a sharded search ranks over (:class:`fusionrank.serving.shards.ShardSearch`): the feature builder,
        the ranker and the explainer read it as they read the whole catalogue (``emb``, ``emb_mask``,
        :meth:`modality_mask`, :meth:`record`, ``lex_text``); the candidate stage cannot run on it. ``emb`` is
        float32, as the catalogue's tables answer a lookup, and kept float32 (no second rounding).
        """
        config = config or CatalogConfig()
        P = len(records[S.PRODUCT_ID])
        emb, emb_mask = _with_attribute_tables(records, emb, emb_mask, config)
        self = cls(config.model_copy(update={"table_dtype": "float32"}), {t: emb[t].shape[1] for t in CATALOG_TABLES})
        for c in RECORD_COLUMNS:
            v = records.get(c)
            self.records[c] = np.asarray(list(v) if v is not None else [None] * P, dtype=object)
        self.records[S.PRODUCT_ID] = np.asarray([str(p) for p in self.records[S.PRODUCT_ID]], dtype=object)
        self.row_of = {p: i for i, p in enumerate(self.records[S.PRODUCT_ID])}
        self.cat_code = self._codes(self.records[S.CATEGORY])
        for f in LEXICAL_FIELDS:
            self.lex_text[f] = np.asarray([t or "" for t in lex_texts[f]], dtype=object)
        for t in CATALOG_TABLES:
            self.emb_mask[t] = np.asarray(emb_mask[t], bool).copy()
            self.emb[t] = EmbeddingTable.from_rows(np.asarray(emb[t], np.float32), self.emb_mask[t], "float32")
        self.live = np.ones(P, bool)
        self.n_rows = self.cap = P
        self.catalogue_rows = np.arange(P) if catalogue_rows is None else np.asarray(catalogue_rows, np.int64)
        self._refresh_category_names()
        return self

    @classmethod
    def from_store(cls, products: pd.DataFrame, store, config: CatalogConfig | None = None, text_encoder: str | None = None,
                   transcriber: str | None = None, log=print):
        """Tables of an ingested catalogue from its embedding store (nothing is encoded here).

        Raises :class:`FusionrankError` naming the command to run when a product has no
        title embedding for the title field.
        """
        from ..encode import EncodeSettings, indexed_titles
        from ..store import EmbeddingStore

        defaults = EncodeSettings()
        text_encoder = text_encoder or defaults.text["name"]
        transcriber = transcriber or defaults.transcriber["name"]
        config = config or CatalogConfig()
        store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        p = products.reset_index(drop=True)
        n = len(p)
        ids = p[S.PRODUCT_ID].astype(str).tolist()
        emb, mask = {}, {}
        for m in MODALITIES:
            feat = m.store_feature(config.title_field, text_encoder)
            if m.required and not store.exists(feat):
                raise FusionrankError(f"the embedding store at {store.root} has no {feat!r} feature; prepare it with "
                                      f"`fusionrank encode CATALOG --store {store.root}` (or `fusionrank train`)")
            emb[m.table], mask[m.table] = store.matrix(feat, ids, dim=None if m.required else emb["title"].shape[1])
            if m.required and not mask[m.table].all():
                missing = int((~mask[m.table]).sum())
                raise FusionrankError(f"{missing} product(s) have no {feat!r} embedding in {store.root}; prepare them with "
                                      f"`fusionrank encode CATALOG --store {store.root}`")

        def col(c):
            if c not in p.columns:
                return [None] * n
            return p[c].astype(object).where(p[c].notna(), None).tolist()

        titles = indexed_titles(p, config.title_field)
        transcripts = p[S.PRODUCT_ID].astype(str).map(store.text_map(transcript_feature(transcriber))).tolist()
        transcripts = [t if isinstance(t, str) and t else None for t in transcripts]
        records = {c: col(c) for c in (S.PRODUCT_ID, S.TITLE, S.DESCRIPTION, S.BRAND, S.COLOR, S.CATEGORY, S.IMAGE, S.AUDIO)}
        records[S.PRODUCT_ID] = ids
        records[INDEXED_TITLE] = titles
        records[TRANSCRIPT_TEXT] = transcripts
        desc = [d if isinstance(d, str) else "" for d in col(S.DESCRIPTION)]
        photo = photo_colours(store, ids, config.title_field, log) if config.photo_attributes else None
        probas = photo_colour_probas(store, ids, config.title_field, log) if config.photo_attributes else None
        emb[COLOUR_TABLE], mask[COLOUR_TABLE] = colour_table(titles, probas,
                                                            transcripts if config.transcript_attributes else None)
        return cls.build(records, lexical_texts(titles, desc, transcripts, photo), emb, mask, config, log)

    def dense_tables(self) -> list[str]:
        return [s.split(":", 1)[1] for s in self.config.candidates.sources if s.startswith("dense:")]

    def _codes(self, categories) -> np.ndarray:
        """Integer codes of categories (case-insensitive; 0 for none), assigning new codes as needed."""
        out = np.zeros(len(categories), np.int32)
        for i, c in enumerate(categories):
            if c is not None and str(c).strip():
                out[i] = self._cat_codes.setdefault(str(c).lower(), len(self._cat_codes) + 1)
        return out

    def _refresh_category_names(self) -> None:
        """Count live products per (lower-cased) category from scratch; writes then keep the counts."""
        count: dict[str, int] = {}
        names: dict[str, str] = {}
        for c in self.records[S.CATEGORY][:self.n_rows][self.live[:self.n_rows]]:
            if c is None or (isinstance(c, float) and c != c):  # no category (None or NaN)
                continue
            c = str(c)
            if c.strip():
                k = c.lower()
                count[k] = count.get(k, 0) + 1
                names.setdefault(k, c)  # as first seen
        self._cat_count, self._category_names = count, names

    # reads ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.live[:self.n_rows].sum())

    @property
    def ids(self) -> np.ndarray:
        """Product id of every row (object array; removed rows keep their old id)."""
        return self.records[S.PRODUCT_ID][:self.n_rows]

    @property
    def category_names(self) -> list[str]:
        return [self._category_names[k] for k in sorted(self._category_names)]

    def has_category(self, category: str) -> bool:
        return category.lower() in self._category_names

    def rows_of(self, product_ids: Sequence[str]) -> np.ndarray:
        """Rows of live products (-1 for unknown ids)."""
        return np.asarray([self.row_of.get(str(p), -1) for p in product_ids], np.int64)

    def product(self, product_id: str) -> dict[str, Any] | None:
        with self.lock:
            r = self.row_of.get(str(product_id))
            return None if r is None else self.record(r)

    def record(self, row: int) -> dict[str, Any]:
        d = {c: self.records[c][row] for c in RECORD_COLUMNS}
        d["modalities"] = {m.name: bool(self.emb_mask[m.table][row]) for m in MODALITIES}
        return d

    def row_filter(self, category: str | None) -> RowFilter | None:
        """The rows of one category (case-insensitive), cached per version; None for no filter.

        An unknown category is an error that lists the valid ones (the same in every caller).
        """
        if not category:
            return None
        key = category.lower()
        if key not in self._category_names:
            raise UnknownCategory(f"unknown category {category!r}; valid: {', '.join(self.category_names)}")
        hit = self._filters.get(key)
        if hit is None or hit[0] != self.version:
            mask = self.category_mask(category)
            flt = RowFilter(mask, np.packbits(mask, bitorder="little"), float(mask.sum()) / max(1, len(self)))
            self._filters[key] = hit = (self.version, flt)
        return hit[1]

    def media_paths(self) -> list:
        """The photo and clip paths of every row (what the service's media folders are derived from)."""
        with self.lock:
            n = self.n_rows
            return [*self.records[S.IMAGE][:n], *self.records[S.AUDIO][:n]]

    def category_mask(self, category: str) -> np.ndarray:
        """bool ``[n_rows]``: the live rows of one category (case-insensitive; none for a category this catalogue lacks)."""
        return (self.cat_code[:self.n_rows] == self._cat_codes.get(category.lower(), -1)) & self.live[:self.n_rows]

    def category_counts(self) -> dict[str, tuple[str, int]]:
        """Live products per category: lower-cased name -> (name as first seen, count)."""
        return {k: (self._category_names.get(k, k), n) for k, n in self._cat_count.items()}

    def tables(self) -> dict[str, EmbeddingTable]:
        """The embedding tables as they are now (references: rows are append-only, so a reader keeps a consistent view)."""
        with self.lock:
            return dict(self.emb)

    def modality_mask(self, rows: np.ndarray) -> np.ndarray:
        """bool ``rows.shape + (K,)``: which modalities each row has (False on padding, ``rows < 0``)."""
        safe = np.where(rows >= 0, rows, 0)
        with self.lock:
            m = np.stack([self.emb_mask[mod.table][safe] for mod in MODALITIES], -1)
        return m & (rows >= 0)[..., None]

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part (arrays and indexes; Python string objects of the records not counted)."""
        n = self.cap
        return {"embeddings": int(sum(self.emb[t].nbytes + self.emb_mask[t].nbytes for t in CATALOG_TABLES)),
                "ann": int(sum(a.memory_bytes() for a in self.vectors.values())),
                "bm25": int(sum(lx.memory_bytes() for lx in self.lexical.values())),
                "rows": int(self.live.nbytes + 8 * n * (len(RECORD_COLUMNS) + 1 + len(LEXICAL_FIELDS)))}
