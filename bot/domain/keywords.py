"""The keyword engine: which whole messages mean stop, start or help, in which language.

The configuration file lists words per language and intent, plus quick-reply buttons that
count as stop or start for a scope. Matching is on the whole message after NFKC
normalisation, case folding and dropping surrounding punctuation, symbols and emoji; a
message that merely contains an opt-out word is only a *possible* opt-out.
"""
from __future__ import annotations

import enum
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


WORD_INTENTS = (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP)
BUTTON_INTENTS = (Intent.OPT_OUT, Intent.OPT_IN)
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
    return unicodedata.normalize("NFC", "".join(kept))


def normalize(text: str) -> str:
    """The form messages and keywords are compared in: " Ｓtop! 🛑" → "stop", "ARRÊT" → "arret"."""
    text = _without_latin_accents(unicodedata.normalize("NFKC", text).casefold())
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

    def __init__(self, path: str, words: dict[str, dict[Intent, list[str]]], buttons: dict[str, KeywordMatch]):
        self.path = path
        self.languages = tuple(words)
        self._words = words
        self._buttons = buttons
        self._exact: dict[str, KeywordMatch] = {}
        # Opt-out phrases by their first word (with their order in the file, which decides
        # between two found in one text): a message is read once, whatever the number of phrases.
        self._opt_out_phrases: dict[str, list[tuple[int, tuple[str, ...], KeywordMatch]]] = {}
        for language, intents in words.items():
            for intent, keywords in intents.items():
                for keyword in keywords:
                    match = KeywordMatch(intent, language, keyword)
                    self._exact.setdefault(normalize(keyword), match)
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
        tokens = _tokens(normalized)
        found = [
            (order, match)
            for start, token in enumerate(tokens)
            for order, phrase, match in self._opt_out_phrases.get(token, ())
            if tokens[start : start + len(phrase)] == phrase
        ]
        if not found:
            return None
        _, match = min(found, key=lambda candidate: candidate[0])
        return KeywordMatch(Intent.POSSIBLE_OPT_OUT, match.language, match.keyword)

    def match_button(self, *labels: str | None) -> KeywordMatch | None:
        """A quick-reply tap whose payload, id or title is a configured stop/start button."""
        for label in labels:
            if label and (match := self._buttons.get(normalize(label))):
                return match
        return None


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
        unknown = set(sections) - {"languages", "buttons"}
        if unknown:
            name = sorted(unknown)[0]
            raise self.fail(sections[name][0], f"unknown section {name!r} (expected languages, buttons)")
        if "languages" not in sections:
            raise KeywordFileError(f"{self.path}: missing the 'languages' section")
        words = self.languages(sections["languages"][1])
        buttons = self.buttons(sections["buttons"][1], words) if "buttons" in sections else {}
        return KeywordBook(self.path, words, buttons)

    def languages(self, node: yaml.Node) -> dict[str, dict[Intent, list[str]]]:
        words: dict[str, dict[Intent, list[str]]] = {}
        for language, key_node, value in self.mapping(node, "languages"):
            if not _LANGUAGE_CODE.fullmatch(language):
                raise self.fail(key_node, f"{language!r} is not a language code like en or pt_BR")
            intents = {name: (k, v) for name, k, v in self.mapping(value, f"language {language}")}
            for name, (intent_key, _) in intents.items():
                if name not in {i.value for i in WORD_INTENTS}:
                    raise self.fail(intent_key, f"unknown intent {name!r} in {language} (expected opt_out, opt_in, help)")
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
