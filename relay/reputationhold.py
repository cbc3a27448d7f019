"""The reputation guard's memory of its own pause, so that ``ses-relay resume`` holds.

A rate stays high for hours after its cause is fixed (it is computed over a window, and
SES's own over a representative volume), so a guard that judged only the rate would pause
again at its next check and undo every resume. When the guard pauses it writes the rates
it saw to ``reputation-hold.json`` in the queue directory (and keeps them current while
delivery stays paused); a resume turns that into a hold: the guard pauses again only when
a rate rises ``resume_margin`` over the one at resume time, and the hold ends once every
rate is back under its pause threshold. ``ses-relay pause`` still pauses at any time.

One small JSON file beside the ``paused`` file: the CLI, the console and the guard (in
the relay's first process) all reach it, with no socket between them. A file that cannot
be read is no hold: the guard then judges as it did before, it never stops judging.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from relay import log
from relay.config import FeedbackConfig

_log = log.get("reputation")

FILE = "reputation-hold.json"
PAUSED, HELD = "paused", "held"


@dataclass(frozen=True)
class Hold:
    state: str  # PAUSED (by the guard, not yet resumed) or HELD (resumed)
    # "source:kind" ("own:complaint", "cloudwatch:bounce") -> the rate at pause/resume.
    rates: dict[str, float] = field(default_factory=dict)
    since: float = 0.0  # when the guard paused, or when delivery was resumed

    def pauses_at(self, key: str, pause: float, margin: float) -> float:
        """The rate at which the guard pauses again: the plain threshold, or past a held
        rate by *margin* (relative: 0.25 is a quarter worse than at resume)."""
        if self.state != HELD or key not in self.rates:
            return pause
        return max(pause, self.rates[key] * (1 + margin))


def load(directory: Path) -> Hold | None:
    try:
        doc = json.loads((directory / FILE).read_text())
        state, rates, since = doc["state"], doc["rates"], float(doc["since"])
        if state not in (PAUSED, HELD) or not isinstance(rates, dict):
            raise ValueError(state)
        return Hold(state, {str(k): float(v) for k, v in rates.items()}, since)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        _log.warning("reputation_hold_unreadable", path=str(directory / FILE),
                     error=type(e).__name__, hint="ignored: the guard judges the plain "
                                                  "thresholds; delete the file to silence")
        return None


def save(directory: Path, hold: Hold) -> None:
    """Whole or not at all (a reader never sees half a file)."""
    tmp = directory / f".{FILE}.tmp"
    tmp.write_text(json.dumps({"state": hold.state, "rates": hold.rates,
                               "since": hold.since}) + "\n")
    os.replace(tmp, directory / FILE)


def clear(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / FILE).unlink()


def resumed(directory: Path, now: float) -> Hold | None:
    """Delivery was resumed: the guard's pause (if it was the guard's) becomes a hold."""
    hold = load(directory)
    if hold is None or hold.state != PAUSED:
        return hold
    hold = Hold(HELD, hold.rates, now)
    save(directory, hold)
    return hold


def describe(hold: Hold, config: FeedbackConfig) -> list[str]:
    """One line per held rate: what it was, and what pauses delivery again."""
    lines = []
    for key, rate in sorted(hold.rates.items()):
        pause = (config.pause_bounce_rate if key.endswith(":bounce")
                 else config.pause_complaint_rate)
        if pause is None or rate < pause:
            continue
        source, kind = key.split(":", 1)
        again = hold.pauses_at(key, pause, config.resume_margin)
        lines.append(f"{kind} rate ({source}) {rate:.2%} at resume: the guard pauses "
                     f"again only past {again:.2%}, until it falls under {pause:.2%}")
    return lines
