"""The keyword engine: which whole messages mean stop, start or help, in which language.

The configuration file lists words per language and intent, quick-reply buttons that count
as stop or start for a scope, and sentences per language. Words match the whole message after
NFKC normalisation, case folding, dropping accents on Latin letters and surrounding
punctuation, symbols and emoji. Sentences (regular expressions searched in the message) then
say what a message in the user's own words means: ordinary (a near miss such as "cancel my
order": nothing), a clear opt-out (honoured as STOP), a request to stop offers (a marketing
opt-out), or a possible opt-out for staff. A message that merely contains an opt-out word is
only a *possible* opt-out.
"""
from __future__ import annotations

import enum
import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.domain.consent import Scope


class Intent(str, enum.Enum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    POSSIBLE_OPT_OUT = "possible_opt_out"
    YES = "yes"  # an answer to the bot's own opt-in question; by itself an ordinary message (R8)


WORD_INTENTS = (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP, Intent.YES)
# Kinds of sentence, in the order they are tried: what the first that is found in a message says.
# Offers first: "stop sending me ads" names what to stop, and must not read as "stop sending me".
SENTENCE_KINDS = ("ordinary", "marketing_out", "opt_out", "opt_in", "help", "possible")
_SENTENCE_MEANS: dict[str, tuple[Intent, Scope] | None] = {
    "ordinary": None,
    "opt_out": (Intent.OPT_OUT, Scope.ALL),
    "marketing_out": (Intent.OPT_OUT, Scope.MARKETING),
    "opt_in": (Intent.OPT_IN, Scope.ALL),
    "help": (Intent.HELP, Scope.ALL),
    "possible": (Intent.POSSIBLE_OPT_OUT, Scope.ALL),
}
BUTTON_INTENTS = (Intent.OPT_OUT, Intent.OPT_IN)
# A file's sentences are compiled to be checked, then again to be matched: more than re's own
# cache holds (512), so this one keeps them in between (and for the next book of the same file).
_compiled = functools.lru_cache(maxsize=4096)(re.compile)
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_INNER_SEPARATORS = re.compile(r"[\s\u2010-\u2015_\-]+")


class KeywordFileError(ValueError):
    """The keyword file cannot be used; the message names the file, line and word."""


@dataclass(frozen=True)
class KeywordMatch:
    intent: Intent
    language: str
    keyword: str  # as written in the file
    scope: Scope = Scope.ALL


def _is_edge_noise(char: str) -> bool:
    """Punctuation, symbols (emoji), spaces, controls, keycaps and variation selectors."""
    category = unicodedata.category(char)
    return category[0] in "PSZC" or category == "Me" or 0xFE00 <= ord(char) <= 0xFE0F


def _without_latin_accents(text: str) -> str:
    """"arrêt" → "arret", "información" → "informacion": people often type without accents. Only
    Latin letters lose their marks; in Devanagari or Arabic the marks are part of the word."""
    decomposed = unicodedata.normalize("NFD", text)
    kept, base_is_latin = [], False
    for char in decomposed:
        if unicodedata.combining(char):
            if not base_is_latin:
                kept.append(char)
            continue
        base_is_latin = "LATIN" in unicodedata.name(char, "")
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept)).replace("ı", "i")  # Turkish dotless i, typed or not


def folded(text: str) -> str:
    """Case and accents folded, as sentences are searched: "Ｎo MÁS" → "no mas"."""
    return _without_latin_accents(unicodedata.normalize("NFKC", text).casefold())


def normalize(text: str) -> str:
    """The form messages and keywords are compared in: " Ｓtop! 🛑" → "stop", "ARRÊT" → "arret"."""
    text = folded(text)
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return _INNER_SEPARATORS.sub(" ", text[start:end])


def _tokens(normalized: str) -> tuple[str, ...]:
    """Words of a normalized text: runs of letters, marks and digits."""
    cleaned = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in normalized)
    return tuple(cleaned.split())


class KeywordBook:
    """Loaded keywords, ready to match. Build it with `load_keywords`."""

    def __init__(
        self, path: str, words: dict[str, dict[Intent, list[str]]], buttons: dict[str, KeywordMatch],
        sentences: dict[str, dict[str, list[str]]] | None = None,
    ):
        self.path = path
        self.languages = tuple(words)
        self._words = words
        self._buttons = buttons
        self._sentences = [(_SENTENCE_MEANS[kind], _Sentences(sentences or {}, kind)) for kind in SENTENCE_KINDS]
        self._exact: dict[str, KeywordMatch] = {}
        # Opt-out phrases by their first word (with their order in the file, which decides
        # between two found in one text): a message is read once, whatever the number of phrases.
        self._opt_out_phrases: dict[str, list[tuple[int, tuple[str, ...], KeywordMatch]]] = {}
        self._yes: dict[str, KeywordMatch] = {}
        for language, intents in words.items():
            for intent, keywords in intents.items():
                for keyword in keywords:
                    match = KeywordMatch(intent, language, keyword)
                    (self._yes if intent is Intent.YES else self._exact).setdefault(normalize(keyword), match)
                    phrase = _tokens(normalize(keyword))
                    if intent is Intent.OPT_OUT and phrase:
                        order = sum(map(len, self._opt_out_phrases.values()))
                        self._opt_out_phrases.setdefault(phrase[0], []).append((order, phrase, match))

    def words(self, language: str, intent: Intent) -> list[str]:
        return list(self._words[language][intent])

    def match_text(self, text: str) -> KeywordMatch | None:
        """The intent of a whole message, a possible opt-out, or None for ordinary text."""
        normalized = normalize(text)
        exact = self._exact.get(normalized)
        if exact is not None:
            return exact
        tokens = _tokens(folded(text))  # words only: "don't!!" -> "don", "t"
        said = " ".join(tokens)
        near_misses: set[int] = set()  # the words an ordinary near miss covers
        covered_until, at = 0, 0
        for index, word in enumerate(tokens):
            if at < covered_until:
                near_misses.add(index)
            else:  # the first sentence found, by where it begins; a near miss vetoes what begins inside it
                for means, sentences in self._sentences:
                    sentence = sentences.match_at(said, at, word)
                    if sentence is None:
                        continue
                    language, written, end = sentence
                    if means is not None:
                        return KeywordMatch(means[0], language, written, means[1])
                    covered_until = end
                    near_misses.add(index)
                    break
            at += len(word) + 1
        found = [
            (order, match)
            for start, token in enumerate(tokens)
            if start not in near_misses
            for order, phrase, match in self._opt_out_phrases.get(token, ())
            if tokens[start : start + len(phrase)] == phrase
        ]
        if not found:
            return None
        _, match = min(found, key=lambda candidate: candidate[0])
        return KeywordMatch(Intent.POSSIBLE_OPT_OUT, match.language, match.keyword)

    def match_yes(self, text: str) -> KeywordMatch | None:
        """A whole message that says yes ("Yes", "sí 👍"): an opt-in only as the answer to the
        bot's own opt-in question, which the caller must find; `match_text` reads it as ordinary."""
        return self._yes.get(normalize(text))

    def match_button(self, *labels: str | None) -> KeywordMatch | None:
        """A quick-reply tap whose payload, id or title is a configured stop/start button."""
        for label in labels:
            if label and (match := self._buttons.get(normalize(label))):
                return match
        return None


class _Sentences:
    """One kind of sentence, every language's, ready to find in a message.

    A message is tried only where its words begin (`match_at`), and at each word only the
    sentences whose first word could begin there (indexed by its first two letters): a long
    message costs a few dozen tries, not every sentence at every character."""

    def __init__(self, sentences: dict[str, dict[str, list[str]]], kind: str):
        self._by_start: dict[str, list[tuple[re.Pattern, str, str]]] = {}
        self._anywhere: list[tuple[re.Pattern, str, str]] = []  # sentences whose first word is not plain
        for language, kinds in sentences.items():
            for sentence in kinds.get(kind, []):
                entry = (_compiled(sentence), language, sentence)
                starts = _first_words(sentence)
                if starts is None:
                    self._anywhere.append(entry)
                for start in sorted({word[:2] for word in starts or ()}):
                    self._by_start.setdefault(start, []).append(entry)

    def match_at(self, said: str, at: int, word: str) -> tuple[str, str, int] | None:
        """(language, sentence, where it ends) of the first sentence, in file order, that
        begins at `at`, where `word` begins."""
        for candidates in (self._by_start.get(word[:2], ()), self._anywhere):
            for pattern, language, sentence in candidates:
                hit = pattern.match(said, at)
                if hit is not None:
                    return language, sentence, hit.end()
        return None


# A sentence's first element: a word, or a group of alternative words, not optional.
_FIRST_ELEMENT = re.compile(r"(?:\\b|\^)?(?:\(([^()\\?*+\[\]{}.$^]*)\)|([^\s()\\?*+|\[\]{}.$^]+))(?![?*{])")


def _first_words(sentence: str) -> list[str] | None:
    """The words a sentence can begin with, or None when they cannot be read off it simply."""
    element = _FIRST_ELEMENT.match(sentence)
    if element is None:
        return None
    alternatives = element.group(1).split("|") if element.group(1) is not None else [element.group(2)]
    words = [alternative.split(" ")[0] for alternative in alternatives]
    return words if all(len(word) >= 2 for word in words) else None


# -- loading ----------------------------------------------------------------------------


def load_keywords(path: str | Path) -> KeywordBook:
    """Read and validate the keyword file; raise KeywordFileError naming file, line and word."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise KeywordFileError(f"{path}: cannot read keyword file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise KeywordFileError(f"{path}: keyword file is not UTF-8 text") from None
    except ValueError:  # a NUL in the path
        raise KeywordFileError(f"{path!r}: not a usable file name") from None
    return _book(path, text)


@functools.lru_cache(maxsize=8)
def _book(path: str, text: str) -> KeywordBook:
    """The book of one file's text. Kept, as a KeywordBook never changes once built: a process that
    builds the app again from an unchanged file (the test suite, once per test) does not compile its
    thousands of sentences again. A changed file is other text, and read anew."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        assert mark is not None, "PyYAML gives every error it raises while composing a position"
        raise KeywordFileError(f"{path}:{mark.line + 1}: invalid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise KeywordFileError(f"{path}: invalid YAML: {error}") from None
    return _Reader(path).book(root)


class _Reader:
    """Walks the YAML node tree so that every error can point at a line."""

    def __init__(self, path: str):
        self.path = path
        self.seen: dict[str, tuple[str, Intent, int]] = {}  # normalized word -> (word, intent, line)

    def fail(self, node: yaml.Node, message: str) -> KeywordFileError:
        return KeywordFileError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node | None, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping") if node else KeywordFileError(f"{self.path}: file is empty")
        items, keys = [], set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or not key:
                raise self.fail(key_node, f"{what} keys must be names")
            if key in keys:
                raise self.fail(key_node, f"{key!r} appears twice in {what}")
            keys.add(key)
            items.append((key, key_node, value_node))
        return items

    def strings(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty list of words")
        result: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or not item.value.strip():
                raise self.fail(item, f"{what} entries must be words")
            if not normalize(item.value):
                raise self.fail(item, f"word {item.value!r} in {what} is empty without its punctuation")
            result.append((item.value, item))
        return result

    def claim(self, word: str, node: yaml.Node, intent: Intent) -> None:
        """One word, one intent: the same word under two intents would make STOP ambiguous."""
        key = normalize(word)
        previous = self.seen.get(key)
        if previous and previous[1] is not intent:
            raise self.fail(
                node, f"word {word!r} is listed under both {previous[1].value} (line {previous[2]}) and {intent.value}"
            )
        self.seen.setdefault(key, (word, intent, node.start_mark.line + 1))

    def book(self, root: yaml.Node | None) -> KeywordBook:
        sections = {key: (key_node, value) for key, key_node, value in self.mapping(root, "the keyword file")}
        unknown = set(sections) - {"languages", "buttons", "sentences"}
        if unknown:
            name = sorted(unknown)[0]
            raise self.fail(sections[name][0], f"unknown section {name!r} (expected languages, buttons, sentences)")
        if "languages" not in sections:
            raise KeywordFileError(f"{self.path}: missing the 'languages' section")
        words = self.languages(sections["languages"][1])
        buttons = self.buttons(sections["buttons"][1], words) if "buttons" in sections else {}
        sentences = self.sentences(sections["sentences"][1], words) if "sentences" in sections else {}
        return KeywordBook(self.path, words, buttons, sentences)

    def sentences(self, node: yaml.Node, words: dict) -> dict[str, dict[str, list[str]]]:
        """Per language and kind, regular expressions in lower case without accents (`folded`)."""
        sentences: dict[str, dict[str, list[str]]] = {}
        for language, key_node, value in self.mapping(node, "sentences"):
            if language not in words:
                raise self.fail(key_node, f"sentences for {language!r}, which is not one of the languages")
            sentences[language] = {}
            for kind, kind_node, listed in self.mapping(value, f"sentences of {language}"):
                if kind not in SENTENCE_KINDS:
                    raise self.fail(kind_node, f"unknown kind of sentence {kind!r} (expected {', '.join(SENTENCE_KINDS)})")
                patterns = []
                for sentence, sentence_node in self.strings(listed, f"sentences.{language}.{kind}"):
                    pattern = folded(sentence)
                    try:
                        if _compiled(pattern).search(""):
                            raise self.fail(sentence_node, f"sentence {sentence!r} matches an empty message")
                    except re.error as error:
                        raise self.fail(sentence_node, f"sentence {sentence!r} is not a regular expression: {error}") from None
                    patterns.append(pattern)
                sentences[language][kind] = patterns
        return sentences

    def languages(self, node: yaml.Node) -> dict[str, dict[Intent, list[str]]]:
        words: dict[str, dict[Intent, list[str]]] = {}
        for language, key_node, value in self.mapping(node, "languages"):
            if not _LANGUAGE_CODE.fullmatch(language):
                raise self.fail(key_node, f"{language!r} is not a language code like en or pt_BR")
            intents = {name: (k, v) for name, k, v in self.mapping(value, f"language {language}")}
            for name, (intent_key, _) in intents.items():
                if name not in {i.value for i in WORD_INTENTS}:
                    raise self.fail(intent_key, f"unknown intent {name!r} in {language} (expected opt_out, opt_in, help, yes)")
            words[language] = {}
            for intent in WORD_INTENTS:
                if intent.value not in intents:
                    raise self.fail(key_node, f"language {language} has no {intent.value} words")
                listed = self.strings(intents[intent.value][1], f"{language}.{intent.value}")
                for word, word_node in listed:
                    self.claim(word, word_node, intent)
                words[language][intent] = [word for word, _ in listed]
        if not words:
            raise self.fail(node, "languages must list at least one language")
        return words

    def buttons(self, node: yaml.Node, words: dict) -> dict[str, KeywordMatch]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "buttons must be a list")
        buttons: dict[str, KeywordMatch] = {}
        claimed: dict[str, Intent] = {}
        for item in node.value:
            fields = {key: value for key, _, value in self.mapping(item, "a button")}
            for required in ("match", "intent", "language"):
                if required not in fields:
                    raise self.fail(item, f"a button needs {required!r}")
            intent_text = fields["intent"].value
            if intent_text not in {i.value for i in BUTTON_INTENTS}:
                raise self.fail(fields["intent"], f"button intent must be opt_out or opt_in, not {intent_text!r}")
            language = fields["language"].value
            if language not in words:
                raise self.fail(fields["language"], f"button language {language!r} is not one of the languages")
            scope_text = fields["scope"].value if "scope" in fields else Scope.ALL.value
            if scope_text not in {s.value for s in Scope}:
                raise self.fail(fields["scope"], f"button scope must be all or marketing, not {scope_text!r}")
            intent = Intent(intent_text)
            for label, label_node in self.strings(fields["match"], "button match"):
                key = normalize(label)
                if claimed.get(key, intent) is not intent:
                    raise self.fail(label_node, f"button {label!r} is listed as both {claimed[key].value} and {intent.value}")
                claimed[key] = intent
                buttons.setdefault(key, KeywordMatch(intent, language, label, Scope(scope_text)))
        return buttons
