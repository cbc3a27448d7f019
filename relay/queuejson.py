"""Reading back the queue's JSON: an entry's envelope and its delivery state, checked.

The queue wrote these files itself, but a disk, an editor or another version may have been
there since. Whatever is in them must either come out as the types delivery works with, or
be refused here with a ValueError (the spool then moves the entry to ``corrupt/``): a field
of the wrong type would otherwise fail deep inside a delivery attempt, again at every retry.
"""

from __future__ import annotations

import json
from typing import Any


def loads(raw: bytes) -> Any:
    """json.loads, with every way it can fail as a ValueError (deep nesting is a
    RecursionError there: ``[[[[...`` 100,000 deep)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as e:  # a ValueError already; said plainly
        raise ValueError(f"not UTF-8 (byte {e.start})") from None


def envelope_fields(raw: bytes) -> dict[str, Any]:
    """The keyword arguments of spool.Envelope, from its JSON."""
    d = loads(raw)
    if not isinstance(d, dict) or not isinstance(d.get("mail_from"), str):
        raise ValueError("envelope is not an object with mail_from")
    rcpts = d.get("rcpt_tos")
    if not isinstance(rcpts, list) or not rcpts or not all(isinstance(r, str) for r in rcpts):
        raise ValueError("envelope has no recipients")
    tags = d.get("tags")
    tags = [] if tags is None else tags
    if not isinstance(tags, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in tags):
        raise ValueError("envelope tags are not name/value pairs")
    fields: dict[str, Any] = {"mail_from": d["mail_from"], "rcpt_tos": tuple(rcpts),
                              "tags": tuple((n, v) for n, v in tags)}
    for key in ("user", "peer", "listener", "configuration_set"):
        value = d.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"envelope {key} is not a string")
        fields[key] = value
    no_dsn = d.get("no_dsn", False)
    if not isinstance(no_dsn, bool):
        raise ValueError("envelope no_dsn is not true or false")
    fields["no_dsn"] = no_dsn
    return fields


def state_fields(raw: bytes) -> dict[str, Any]:
    """The keyword arguments of spool.DeliveryState, from its JSON. Keys it does not
    know are left out (bookkeeping a later version may add)."""
    d = loads(raw)
    if not isinstance(d, dict):
        raise ValueError("delivery state is not an object")
    fields: dict[str, Any] = {}
    if "attempts" in d:
        if not _is_int(d["attempts"]) or d["attempts"] < 0:
            raise ValueError("attempts is not a count")
        fields["attempts"] = d["attempts"]
    if "last_error" in d:
        if not isinstance(d["last_error"], str):
            raise ValueError("last_error is not a string")
        fields["last_error"] = d["last_error"]
    if "last_attempt" in d:
        value = d["last_attempt"]
        if not (_is_int(value) or isinstance(value, float)):
            raise ValueError("last_attempt is not a time")
        fields["last_attempt"] = float(value)
    if "done" in d:
        done = d["done"]
        if not isinstance(done, dict) or not all(isinstance(v, str) for v in done.values()):
            raise ValueError("done is not a mapping of recipients to message ids")
        fields["done"] = done
    for key in ("rejected", "last_deferred"):
        if key in d:
            value = d[key]
            if not isinstance(value, dict) or not all(_is_reason(v) for v in value.values()):
                raise ValueError(f"{key} is not a mapping of recipients to [code, error, "
                                 "hint]")
            fields[key] = value
    return fields


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_reason(value: object) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(x, str)
                                                               for x in value)
