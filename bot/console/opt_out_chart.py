"""The opt-out rate of a campaign over time, drawn as an SVG the server renders (no script, no
chart library): at each of a few moments since its first message, the people who opted out
after it reached them over the people it had reached by then."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from bot.storage.campaign_reports import Reach

MOMENTS = 24  # points on the line, evenly spaced from the first message to the latest event
WIDTH, HEIGHT = 400, 180  # the SVG's own units; it scales to the page's width
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 26  # room for the axis labels


@dataclass(frozen=True)
class Moment:
    at: datetime
    reached: int
    opted_out: int

    @property
    def rate(self) -> float:
        return self.opted_out / self.reached if self.reached else 0.0


@dataclass(frozen=True)
class Chart:
    """What the template draws: the line's points and the labels, in SVG units."""

    points: str  # "x,y x,y ...", a polyline
    limit_y: float  # the line at which the campaign pauses itself
    limit_label: str
    y_labels: list[tuple[float, str]]  # (y, "1.0%")
    x_labels: list[tuple[float, str, str]]  # (x, text-anchor, "11-24 12:00")
    latest: Moment
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    bottom_edge: int = HEIGHT - BOTTOM


def moments(reach: Reach, count: int = MOMENTS) -> list[Moment]:
    """The rate at `count` moments evenly spaced over the campaign's life; none before it reached anyone."""
    if not reach.reached:
        return []
    start = reach.reached[0]
    end = max(reach.reached[-1], reach.opted_out[-1] if reach.opted_out else start)
    if end == start:
        return [_moment(reach, start)]
    step = (end - start) / count  # rounded down to a microsecond: the last moment is `end` itself, or it could miss the latest
    return [_moment(reach, start + step * n) for n in range(count)] + [_moment(reach, end)]


def chart(points: list[Moment], limit: float) -> Chart | None:
    """The drawing of `points` with the pause threshold `limit` (a rate) marked; None without points."""
    if not points:
        return None
    top = max(max(point.rate for point in points), limit) * 1.25 or 0.01
    start, end = points[0].at, points[-1].at
    span = (end - start).total_seconds() or 1.0
    x = lambda at: LEFT + (WIDTH - LEFT - RIGHT) * (at - start).total_seconds() / span
    y = lambda rate: TOP + (HEIGHT - TOP - BOTTOM) * (1 - rate / top)
    line = [(x(point.at), y(point.rate)) for point in points]
    if len(line) == 1:  # one moment: a flat line across, so that it shows
        line = [(LEFT, line[0][1]), (WIDTH - RIGHT, line[0][1])]
    labels = [(start, "start")] if start == end else [(start, "start"), (end, "end")]
    return Chart(
        points=" ".join(f"{px:.1f},{py:.1f}" for px, py in line),
        limit_y=round(y(limit), 1), limit_label=f"pauses above {limit:.1%}",
        y_labels=[(round(y(rate), 1), f"{rate:.1%}") for rate in (0, top / 2, top)],
        x_labels=[(round(x(at), 1), anchor, at.strftime(_time_format(span))) for at, anchor in labels],
        latest=points[-1],
    )


def _time_format(span: float) -> str:
    """Times as precise as the span between the first and last needs, in UTC."""
    if span < 600:
        return "%H:%M:%S"
    return "%H:%M" if span < 86400 else "%m-%d %H:%M"


def _moment(reach: Reach, at: datetime) -> Moment:
    return Moment(at, bisect_right(reach.reached, at), bisect_right(reach.opted_out, at))
