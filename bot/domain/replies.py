"""Reply texts: one file per reply and language under templates/replies/, naming the business."""
from __future__ import annotations

import enum
import functools
from pathlib import Path

import jinja2

from bot.domain.consent import ConsentState, Marketing
from bot.domain.keywords import Intent, KeywordBook


class Reply(str, enum.Enum):
    WELCOME = "welcome"
    STOP_CONFIRMATION = "stop_confirmation"
    MARKETING_STOP_CONFIRMATION = "marketing_stop_confirmation"  # offers stopped, the rest goes on
    MARKETING_RESUME_CONFIRMATION = "marketing_resume_confirmation"  # offers come again
    # START said truthfully (R8): what it gave back depends on what the person had agreed to.
    START_CONFIRMATION = "start_confirmation"  # messages, and the offers they had agreed to
    START_CONFIRMATION_NO_OFFERS = "start_confirmation_no_offers"  # messages; offers they never agreed to, never
    START_CONFIRMATION_OFFERS_STOPPED = "start_confirmation_offers_stopped"  # messages; offers stay stopped
    OPT_IN_QUESTION = "opt_in_question"  # "Reply YES to get offers from ...": its text is the consent text of a yes
    OPT_IN_CONFIRMATION = "opt_in_confirmation"  # the answer to that yes
    HELP = "help"
    UNSUBSCRIBED_REMINDER = "unsubscribed_reminder"
    POSSIBLE_OPT_OUT = "possible_opt_out"


# The replies that can be the first a user ever gets: each must say how to stop (R9).
TELLS_HOW_TO_STOP = (
    Reply.WELCOME, Reply.START_CONFIRMATION, Reply.START_CONFIRMATION_NO_OFFERS, Reply.START_CONFIRMATION_OFFERS_STOPPED,
    Reply.OPT_IN_CONFIRMATION, Reply.HELP, Reply.POSSIBLE_OPT_OUT,
)


def start_confirmation(state: ConsentState) -> Reply:
    """The confirmation of a START, for the state it left: offers are promised only to a person
    who had agreed to them and has not stopped them since."""
    if state.marketing is Marketing.ALLOWED:
        return Reply.START_CONFIRMATION
    if state.marketing is Marketing.OPTED_OUT:
        return Reply.START_CONFIRMATION_OFFERS_STOPPED
    return Reply.START_CONFIRMATION_NO_OFFERS


class ReplyTextError(ValueError):
    """A reply text is missing or does not render."""


@functools.lru_cache(maxsize=8)
def _environment(directory: Path) -> jinja2.Environment:
    """One Jinja environment per directory in a process. It keeps each text compiled (and compiles
    it again when the file changes), so an app built again, as the tests build one per test, does
    not compile every reply anew."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined, autoescape=False)


class Replies:
    """Renders reply texts with the business name and the keywords of the reply's language."""

    def __init__(self, directory: str | Path, business_name: str, keywords: KeywordBook):
        self.directory = Path(directory)
        self.business_name = business_name
        self.keywords = keywords
        self._env = _environment(self.directory)
        self._rendered: dict[tuple[Reply, str], str] = {}

    def render(self, reply: Reply, language: str) -> str:
        """The text of `reply` in `language` (one of the keyword file's languages). Texts are
        read at start, like the keyword file: each is rendered once, not for every reply."""
        key = (reply, language)
        if key not in self._rendered:
            self._rendered[key] = self._render(reply, language)
        return self._rendered[key]

    def _render(self, reply: Reply, language: str) -> str:
        words = {intent: self.keywords.words(language, intent)[0] for intent in (Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP, Intent.YES)}
        try:
            template = self._env.get_template(f"{language}/{reply.value}.txt")
            return template.render(
                business=self.business_name,
                stop_word=words[Intent.OPT_OUT],
                start_word=words[Intent.OPT_IN],
                help_word=words[Intent.HELP],
                yes_word=words[Intent.YES],
            ).strip()
        except jinja2.TemplateNotFound:
            raise ReplyTextError(f"{self.directory / language / reply.value}.txt: reply text is missing") from None
        except jinja2.TemplateError as error:
            raise ReplyTextError(f"{self.directory / language / reply.value}.txt: {error}") from None

    def check(self) -> None:
        """Render every reply in every configured language; raise on the first that fails."""
        for language in self.keywords.languages:
            for reply in Reply:
                text = self.render(reply, language)
                if self.business_name not in text:
                    raise ReplyTextError(f"{self.directory / language / reply.value}.txt: does not name the business")
