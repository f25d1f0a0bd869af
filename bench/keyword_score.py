"""Score the keyword classifier on the labelled message corpus (tests/fixtures/keyword_corpus.yml).

    python bench/keyword_score.py [--keywords keywords.yml] [--corpus FILE] [--misses]

The sentences in keywords.yml were written against that corpus; `--corpus
tests/fixtures/keyword_corpus_heldout.yml` scores them on messages never used to write them.
Each message is classified as the bot would read it (bot.domain.keywords) and compared with its
label: opt_out, marketing_out, opt_in, help, possible or ordinary. Per language and overall it
prints opt-out recall (opt_out messages honoured as opt-outs), ordinary messages acted on as
opt-outs, and possible-opt-out flags on ordinary messages, against SPEC §3's targets: recall
>= 95%, no ordinary message acted on, flags <= 3%. It measures; it does not gate (exit 0).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.domain.consent import Scope
from bot.domain.keywords import Intent, KeywordBook, KeywordMatch, load_keywords
from bot.settings import PROJECT_ROOT

CORPUS = PROJECT_ROOT / "tests" / "fixtures" / "keyword_corpus.yml"
ACTING = ("opt_out", "marketing_out")  # labels whose messages the bot acts on as opt-outs


def label_of(match: KeywordMatch | None) -> str:
    """The corpus label for what the classifier found."""
    if match is None:
        return "ordinary"
    if match.intent is Intent.OPT_OUT:
        return "marketing_out" if match.scope is Scope.MARKETING else "opt_out"
    return {Intent.OPT_IN: "opt_in", Intent.HELP: "help", Intent.POSSIBLE_OPT_OUT: "possible"}[match.intent]


def score(book: KeywordBook, messages: list[dict]) -> tuple[dict[str, Counter], list[tuple[dict, str]], float]:
    """Counts per language (and "all"), the misclassified messages, and microseconds per message."""
    counts: dict[str, Counter] = defaultdict(Counter)
    misses = []
    started = time.perf_counter()
    found = [label_of(book.match_text(message["text"])) for message in messages]
    per_message = (time.perf_counter() - started) / max(len(messages), 1) * 1e6
    for message, got in zip(messages, found, strict=True):
        for group in (message["lang"], "all"):
            tally = counts[group]
            tally["messages"] += 1
            tally[f"label:{message['label']}"] += 1
            tally["correct"] += got == message["label"]
            if message["label"] == "opt_out":
                tally["opt_out_honoured"] += got == "opt_out"
            if message["label"] == "ordinary":
                tally["ordinary_acted_on"] += got in ACTING
                tally["ordinary_flagged"] += got == "possible"
        if got != message["label"]:
            misses.append((message, got))
    return counts, misses, per_message


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keywords", default=str(PROJECT_ROOT / "keywords.yml"))
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="labelled messages (default: %(default)s)")
    parser.add_argument("--misses", action="store_true", help="list every misclassified message")
    parser.add_argument("--quick", action="store_true", help="the same (it takes well under a second); for dev.py bench")
    options = parser.parse_args(argv)
    book = load_keywords(options.keywords)
    messages = yaml.safe_load(options.corpus.read_text(encoding="utf-8"))["messages"]
    counts, misses, per_message = score(book, messages)
    print(f"keyword classifier on {len(messages)} labelled messages ({options.corpus.name}), {per_message:.1f} us per message")
    print(f"{'language':10} {'messages':>8} {'correct':>8} {'opt-out recall':>15} {'ordinary acted on':>18} {'ordinary flagged':>17}")
    for group in sorted(counts, key=lambda name: (name == "all", name)):
        tally = counts[group]
        print(
            f"{group:10} {tally['messages']:8} {percent(tally['correct'], tally['messages']):>8}"
            f" {percent(tally['opt_out_honoured'], tally['label:opt_out']):>15}"
            f" {tally['ordinary_acted_on']:>18} {percent(tally['ordinary_flagged'], tally['label:ordinary']):>17}"
        )
    total = counts["all"]
    checks = [
        ("opt-out recall >= 95%", total["opt_out_honoured"] >= 0.95 * total["label:opt_out"]),
        ("no ordinary message acted on as an opt-out", total["ordinary_acted_on"] == 0),
        ("possible-opt-out flags on ordinary messages <= 3%", total["ordinary_flagged"] <= 0.03 * total["label:ordinary"]),
    ]
    for name, passed in checks:
        print(f"target {name}: {'PASS' if passed else 'FAIL'}")
    if options.misses:
        for message, got in misses:
            print(f"  [{message['lang']}] {message['text']!r}: {message['label']}, read as {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
