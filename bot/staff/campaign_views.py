"""How campaigns read on a terminal: the table of `flask campaign list` and the report of
`flask campaign status`, whose lines add up to the entries the campaign's list had."""
from __future__ import annotations

from collections.abc import Sequence

from bot.domain.policy import Refusal
from bot.storage.campaigns import Progress, Status, Summary
from bot.storage.outbox import MessageState

LIST_HEADER = ("ID", "TEMPLATE", "CATEGORY", "CREATED (UTC)", "STATE", "RECIPIENTS") + tuple(state.value.upper() for state in MessageState)
INVALID = Refusal.INVALID_RECIPIENT.value
# What a state means in a report line, when its name alone could mislead.
STATE_NOTES = {MessageState.SENT: "not delivered yet", MessageState.DELIVERED: "not read yet"}


def list_row(summary: Summary) -> Sequence[str]:
    """One campaign as a row under LIST_HEADER; its message counts add up to its recipients."""
    return (
        summary.id, _template(summary), summary.category, f"{summary.created_at:%Y-%m-%d %H:%M}", summary.status.value,
        str(summary.recipients), *(str(summary.states.get(state.value, 0)) for state in MessageState),
    )


def status_report(progress: Progress, max_opt_out_rate: float, min_reached: int) -> list[str]:
    """Every entry of the campaign's list counted once, with its share of the list; then the opt-out rate."""
    listed = progress.listed
    lines = [
        f"campaign    {progress.id}",
        f"template    {_template(progress)}, {progress.category}",
        f"created     {progress.created_at:%Y-%m-%d %H:%M} UTC",
        f"state       {_state(progress)}",
    ]
    if listed is None:
        lines.append(f"entries     {progress.recipients} recipients (its list's blank, invalid and repeated entries were not kept then)")
    else:
        lines.append(f"entries     {listed} in its list, each counted once below")
    total = listed if listed is not None else progress.recipients
    share = lambda count: f"{count / total:6.1%}" if total else "     -"
    row = lambda label, count, note="": f"  {label:<22}{count:>7}  {share(count)}  {note}".rstrip()
    if listed is not None:
        lines += [
            row("blank", progress.blank, "rows with no number"),
            row("invalid number", progress.skipped.get(INVALID, 0)),
            row("listed again", progress.duplicates, "sent once"),
        ]
    refused = {reason: count for reason, count in progress.skipped.items() if reason != INVALID}
    lines.append(row("skipped", sum(refused.values()), _reasons(refused)))
    blocked_at_send = sum(progress.blocked_at_send.values())
    for state in MessageState:
        count = progress.states.get(state.value, 0)
        if state is MessageState.BLOCKED:
            lines.append(row("blocked at send time", blocked_at_send, _reasons(progress.blocked_at_send)))
        else:
            lines.append(row(state.value, count, STATE_NOTES.get(state, "")))
    unstored = progress.recipients - sum(progress.states.values())
    if unstored:
        lines.append(row("not stored", unstored, "the sending stopped part-way"))
    lines.append(
        f"opt-outs    {progress.opt_outs} of {progress.reached} reached ({progress.opt_out_rate:.1%}); "
        f"it pauses itself above {max_opt_out_rate:.1%} once {min_reached} are reached"
    )
    return lines


def _template(summary: Summary) -> str:
    return f"{summary.template['name']} ({summary.template['language']})"


def _state(progress: Progress) -> str:
    if progress.status is Status.PAUSED:
        return f"paused: {progress.pause_reason}"
    if progress.status is Status.RUNNING:
        return f"running, {progress.states.get(MessageState.QUEUED.value, 0)} queued"
    return "finished: nothing of it is left queued"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
