"""The reader's primitives: walking a section, expanding ``${VAR}``, and the converters
every section uses. Each converter raises Invalid with the text of the problem; ``get``
turns it into a problem with its key path, so every problem is collected, none raised.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from relay.message import valid_configuration_set, valid_tag

T = TypeVar("T")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g|kib|mib|gib)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_UNITS = {"b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, None: 1}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
MISSING = object()  # a key that is absent, told apart from one set to null



class Invalid(Exception):
    """A value that cannot be converted; its message becomes the problem text."""


class BaseReader:
    def __init__(self, *, base: Path, environ: Mapping[str, str]) -> None:
        self.base = base
        self.environ = environ
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, raw: object, path: str, known: set[str]) -> dict[str, Any] | None:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping")
            return None
        for key in raw:
            if key not in known:
                self.problem(f"{path}.{key}" if path else str(key), "unknown key")
        return raw

    def expand(self, value: object, path: str) -> object:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problem(path, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)

    def get(self, d: dict[str, Any], key: str, path: str, conv: Callable[[object, str], T],
            default: T) -> T:
        if key not in d or d[key] is None:
            return default
        p = f"{path}.{key}" if path else key
        value = self.expand(d[key], p)
        try:
            return conv(value, p)
        except Invalid as e:
            self.problem(p, str(e))
            return default

    def string(self, v: object, _p: str) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise Invalid("must be a string")
        s = str(v)
        if not s:
            raise Invalid("must not be empty")
        # No value is ever more than one line: a newline in a host name or an ARN would
        # end up in a header (Message-ID, bounce notices) or on a command line.
        if _CONTROL.search(s):
            raise Invalid("must not contain control characters (such as a newline)")
        return s

    def path(self, v: object, p: str) -> Path:
        s = Path(self.string(v, p)).expanduser()
        return s if s.is_absolute() else (self.base / s)

    def integer(self, v: object, _p: str) -> int:
        if isinstance(v, bool):
            raise Invalid("must be an integer")
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        if not isinstance(v, int):
            raise Invalid("must be an integer")
        return v

    def port(self, v: object, p: str) -> int:
        n = self.integer(v, p)
        if not 0 <= n <= 65535:
            raise Invalid("must be between 0 and 65535")
        return n

    def positive_int(self, v: object, p: str) -> int:
        n = self.integer(v, p)
        if n < 1:
            raise Invalid("must be at least 1")
        return n

    def duration(self, v: object, _p: str) -> float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            seconds = float(v)
        elif isinstance(v, str) and (m := _DURATION.match(v)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise Invalid("must be a duration such as 30s, 10m, 5d")
        if seconds <= 0:
            raise Invalid("must be positive")
        return seconds

    def size(self, v: object, _p: str) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        elif isinstance(v, str) and (m := _SIZE.match(v)):
            unit = m.group(2).lower() if m.group(2) else None
            n = int(float(m.group(1)) * _SIZE_UNITS[unit])
        else:
            raise Invalid("must be a size in bytes, or such as 10MB, 512KiB")
        if n < 1:
            raise Invalid("must be positive")
        return n

    def choice(self, options: tuple[str, ...]) -> Callable[[object, str], str]:
        def conv(v: object, p: str) -> str:
            s = self.string(v, p)
            if s not in options:
                raise Invalid(f"must be one of {', '.join(options)}")
            return s

        return conv

    def network(self, v: object, p: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(self.string(v, p), strict=False)
        except ValueError:
            raise Invalid("must be an IP network in CIDR notation (10.0.0.0/8)") from None

    def networks(self, raw: object, path: str
                 ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "must be a list of CIDR networks")
            return ()
        out = []
        for i, item in enumerate(raw):
            try:
                out.append(self.network(self.expand(item, f"{path}[{i}]"), f"{path}[{i}]"))
            except Invalid as e:
                self.problem(f"{path}[{i}]", str(e))
        return tuple(out)

    def hostname(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not HOSTNAME.match(s):
            raise Invalid("must be a host name such as relay.example.com")
        return s

    def arn(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not re.match(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:.+$", s):
            raise Invalid("must be an ARN such as arn:aws:iam::123456789012:role/name")
        return s

    def positive_float(self, v: object, _p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise Invalid("must be a number")
        if v <= 0:
            raise Invalid("must be positive")
        return float(v)

    def url(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not re.match(r"^https?://[^/\s]+", s):
            raise Invalid("must be an http:// or https:// URL")
        return s

    def fraction(self, v: object, _p: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
            raise Invalid("must be a fraction between 0 and 1, such as 0.05 for 5%")
        return float(v)

    def boolean(self, v: object, _p: str) -> bool:
        if not isinstance(v, bool):
            raise Invalid("must be true or false")
        return v

    def address(self, v: object, p: str) -> str:
        from relay.addresses import AddressError, normalize

        try:
            return normalize(self.string(v, p))
        except AddressError as e:
            raise Invalid(f"not a valid address ({e.reason})") from None

    def address_patterns(self, raw: object, path: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "must be a list of addresses and @domain entries")
            return ()
        out = []
        for i, item in enumerate(raw):
            from relay.addresses import AddressError, normalize_pattern

            try:
                out.append(normalize_pattern(self.string(self.expand(item, path), path)))
            except (AddressError, Invalid) as e:
                self.problem(f"{path}[{i}]", getattr(e, "reason", str(e)))
        return tuple(out)

    def ses_name(self, v: object, p: str) -> str:
        s = self.string(v, p)
        if not valid_configuration_set(s):
            raise Invalid("must be 1-64 characters of letters, digits, _ and -")
        return s

    def tags(self, v: object, p: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, dict):
            raise Invalid("must be a mapping of tag names to values")
        out = []
        for name, value in v.items():
            if not valid_tag(str(name)) or not valid_tag(str(value)):
                raise Invalid(f"tag {name}: names and values use letters, digits, _ and - "
                               "(at most 255)")
            out.append((str(name), str(value)))
        return tuple(out)
