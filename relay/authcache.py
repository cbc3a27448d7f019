"""A bounded memory of successful password checks, so that a client that logs in on every
connection (PHPMailer, msmtp, nodemailer) pays for scrypt once, not on every AUTH: scrypt
was about 52 ms of the 88 ms from connect to the 250 after DATA (issue 16).

What is remembered is a tag, never a password: HMAC-SHA256, under a random key made when
the process starts and kept only in its memory, of the user name, the user's stored hash
and the password. Why this and not something else:

- not the password, nor a plain hash of it: a memory dump or a core file would give the
  password away, or a fast hash of it to test guesses against with no key to find;
- the stored hash is in the tag, so a new password (or the same one set again, with a new
  salt) no longer matches: an old success cannot outlive a change in the users file;
- keyed with a per-process secret, tags mean nothing outside this process's lifetime and
  cannot be precomputed; the user name in the tag keeps equal passwords apart.

A dump that also holds the key lets its reader test guesses against the cached tags at
HMAC speed rather than scrypt speed: that is the price. Such a dump is taken from a
process through which every password arrives in clear (TLS and AUTH buffers, freed but not
wiped), so it is exposed to much the same reader anyway; the TTL bounds how long a tag
lives, and a restart makes every tag worthless.

Only successes are remembered, and a wrong password always costs the full scrypt: a miss
looks, in time, exactly as it did without the cache, and a hit only answers sooner what
235 would say anyway. A check is one HMAC-SHA256 of about 100 bytes, a few microseconds
(bench/micro.py: 2.5 us, against 36 ms for the scrypt it saves, on this 2-core machine):
cheap enough to make on the event loop, with no hand-over to a thread.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

# Dovecot's auth_cache_ttl default is an hour; a few thousand users is more than a relay
# in front of SES serves, and an entry costs about 150 bytes.
SIZE = 4096
TTL = 3600.0


class SuccessCache:
    """LRU of (user, stored hash, password) tags that verified, each for *ttl* seconds.

    It follows one users snapshot (``relay.users.UserDB``, immutable, replaced on SIGHUP):
    shown another one, it forgets everything, whether the file changed or not.
    """

    def __init__(self, size: int = SIZE, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._tags: OrderedDict[bytes, float] = OrderedDict()  # tag -> expiry
        self._snapshot: object = None

    def __len__(self) -> int:
        return len(self._tags)

    def _tag(self, name: str, stored_hash: str, password: bytes) -> bytes:
        # Name and hash length-prefixed, the password last: no two different triples give
        # the same message.
        user, stored = name.encode(), stored_hash.encode()
        message = b"%d:%s%d:%s%s" % (len(user), user, len(stored), stored, password)
        return hmac.digest(self._key, message, "sha256")

    def _follow(self, snapshot: object) -> None:
        if snapshot is not self._snapshot:
            self._tags.clear()
            self._snapshot = snapshot

    def verified(self, snapshot: object, name: str, stored_hash: str, password: bytes) -> bool:
        """Whether this password verified for this user and stored hash not long ago."""
        self._follow(snapshot)
        tag = self._tag(name, stored_hash, password)
        expiry = self._tags.get(tag)
        if expiry is None:
            return False
        if expiry < self._clock():
            del self._tags[tag]
            return False
        self._tags.move_to_end(tag)
        return True

    def remember(self, snapshot: object, name: str, stored_hash: str, password: bytes) -> None:
        """A check against *snapshot* succeeded (not kept if a newer snapshot is in use)."""
        if self._size <= 0 or (self._snapshot is not None and snapshot is not self._snapshot):
            return
        self._snapshot = snapshot
        tag = self._tag(name, stored_hash, password)
        self._tags[tag] = self._clock() + self._ttl
        self._tags.move_to_end(tag)
        while len(self._tags) > self._size:
            self._tags.popitem(last=False)
