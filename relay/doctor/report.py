"""The doctor's report: rows (OK, WARN or FAIL; each one not OK with its fix), printed as
they come."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TextIO

from relay import users
from relay.config import Config

Status = Literal["OK", "WARN", "FAIL"]
OK: Status = "OK"
WARN: Status = "WARN"
FAIL: Status = "FAIL"


_CHECK_WIDTH = 22
DETAIL_MAX = 160



@dataclass(frozen=True)
class Row:
    """One line of the report; every row that is not OK says how to fix it."""

    status: Status
    check: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        assert self.status == OK or self.fix, f"{self.check}: a {self.status} row needs a fix"


@dataclass
class Context:
    config: Config
    now: float
    db: users.UserDB | None = None  # set by the users check, read by the AWS checks


@dataclass
class Report:
    """Prints rows as they come, so a slow AWS call shows where it is stuck."""

    out: TextIO
    counts: dict[Status, int] = field(default_factory=lambda: {OK: 0, WARN: 0, FAIL: 0})

    def header(self) -> None:
        self._line("STATUS", "CHECK", "DETAIL")

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            self.counts[row.status] += 1
            self._line(row.status, row.check, row.detail)
            if row.status != OK:
                self._line("", "", f"fix: {row.fix}")
        self.out.flush()

    def summary(self) -> None:
        verdict = ("something above would stop mail" if self.counts[FAIL]
                   else "nothing found that would stop mail")
        self.out.write(f"\n{self.counts[OK]} OK, {self.counts[WARN]} WARN, "
                       f"{self.counts[FAIL]} FAIL: {verdict}\n")

    def _line(self, status: str, check: str, text: str) -> None:
        self.out.write(f"{status:<6} {check:<{_CHECK_WIDTH}} {text}\n")


def guarded(name: str, check: Callable[[], list[Row]]) -> list[Row]:
    # A bug in one check must not hide the others, nor print a traceback.
    try:
        return check()
    except Exception as e:
        return [internal_error(name, e)]


async def aguarded(name: str, check: Callable[[], Awaitable[list[Row]]]) -> list[Row]:
    try:
        return await check()
    except Exception as e:
        return [internal_error(name, e)]


def internal_error(name: str, e: Exception) -> Row:
    return Row(FAIL, name, oneline(f"the check itself failed: {type(e).__name__}: {e}"),
               fix="a ses-relay bug: please report it with this line")


def oneline(text: str, limit: int = DETAIL_MAX) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


