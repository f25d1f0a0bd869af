"""Reply texts: every reply in every language names the business; the first-contact ones say how to stop."""
from __future__ import annotations

import pytest

from bot.domain.keywords import Intent, load_keywords
from bot.domain.replies import TELLS_HOW_TO_STOP, Replies, Reply, ReplyTextError
from bot.settings import PROJECT_ROOT

BOOK = load_keywords(PROJECT_ROOT / "keywords.yml")
REPLIES = Replies(PROJECT_ROOT / "templates" / "replies", "Acme Bakery", BOOK)


@pytest.mark.parametrize("language", BOOK.languages)
@pytest.mark.parametrize("reply", list(Reply))
def test_every_reply_renders_and_names_the_business(reply, language):
    text = REPLIES.render(reply, language)
    assert "Acme Bakery" in text and "{{" not in text


@pytest.mark.parametrize("language", BOOK.languages)
@pytest.mark.parametrize("reply", TELLS_HOW_TO_STOP)
def test_first_contact_replies_say_how_to_stop_in_their_language(reply, language):
    assert BOOK.words(language, Intent.OPT_OUT)[0] in REPLIES.render(reply, language)


@pytest.mark.parametrize("language", BOOK.languages)
def test_stop_confirmation_and_reminder_say_how_to_resume(language):
    start_word = BOOK.words(language, Intent.OPT_IN)[0]
    assert start_word in REPLIES.render(Reply.STOP_CONFIRMATION, language)
    assert start_word in REPLIES.render(Reply.UNSUBSCRIBED_REMINDER, language)


@pytest.mark.parametrize("language", BOOK.languages)
def test_the_opt_in_question_says_how_to_answer_and_how_to_stop(language):
    question = REPLIES.render(Reply.OPT_IN_QUESTION, language)
    assert BOOK.words(language, Intent.YES)[0] in question and BOOK.words(language, Intent.OPT_OUT)[0] in question


def test_a_missing_or_broken_reply_text_is_reported(tmp_path):
    (tmp_path / "en").mkdir()
    for reply in Reply:
        (tmp_path / "en" / f"{reply.value}.txt").write_text("{{ business }} says {{ stop_word }}")
    english_only = load_keywords(PROJECT_ROOT / "keywords.yml")
    with pytest.raises(ReplyTextError, match=r"es/welcome.txt: reply text is missing"):
        Replies(tmp_path, "Acme", english_only).check()
    (tmp_path / "en" / "help.txt").write_text("{{ business }} {{ unknown_word }}")
    with pytest.raises(ReplyTextError, match="help.txt: 'unknown_word' is undefined"):
        Replies(tmp_path, "Acme", english_only).render(Reply.HELP, "en")
