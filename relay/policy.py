"""Policy: the decisions taken at the door, as plain functions of their inputs.

Each answer is a reply string to refuse with, or None to accept. The SMTP handler asks at
the earliest step that can decide: who may send (MAIL), to whom (RCPT), what the From:
header may say (DATA). Reasons for the log come back beside the reply; the reply itself
stays generic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay import mailboxes
from relay.addresses import matches
from relay.config import Config, PolicyConfig
from relay.suppression import SuppressionList
from relay.users import User

SENDER_NOT_ALLOWED = "553 5.7.1 Sender address not allowed for this user"
HEADER_FROM_NOT_ALLOWED = "550 5.7.1 From: header address not allowed for this user"
HEADER_SENDER_NOT_ALLOWED = "550 5.7.1 Sender: header address not allowed for this user"
HEADER_FROM_AMBIGUOUS = "550 5.7.1 From: or Sender: header is ambiguous"
HEADER_FROM_MISSING = "550 5.6.0 Message has no From: header"
NULL_SENDER_REFUSED = "550 5.1.7 Null sender (MAIL FROM:<>) is not accepted here"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
RECIPIENT_SUPPRESSED = "550 5.1.1 Recipient address rejected"
RECIPIENT_NOT_ALLOWED = "550 5.7.1 Recipient address not allowed"


@dataclass(frozen=True)
class Verdict:
    reply: str | None = None  # None: accept
    reason: str = ""
    drop: bool = False  # accept the RCPT, leave the address out of the envelope
    limit: str = ""  # over a user's limit (relay.userlimits): "rate" or "day"

    @property
    def accepted(self) -> bool:
        return self.reply is None


ACCEPT = Verdict()


class Policy:
    def __init__(self, config: Config, suppression: SuppressionList | None) -> None:
        self._suppression = suppression
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self._limits = config.limits
        self._policy = config.policy
        self._drop = config.suppression.action == "drop"
        self._allowed_rcpts = frozenset(config.policy.allowed_recipients)

    @property
    def null_sender_rewrite(self) -> str | None:
        return self._policy.null_sender_rewrite

    def sender(self, user: User | None, address: str) -> Verdict:
        if not _restricted(user):
            return ACCEPT
        assert user is not None
        if matches(address, user.allowed_senders):
            return ACCEPT
        return Verdict(SENDER_NOT_ALLOWED, f"{address} not in allowed_senders of {user.name}")

    def default_from(self, user: User | None, mail_from: str) -> str | None:
        """The From: to add to a message that has none, or None to add nothing.

        SES refuses a message without From:, but only after our 250, so the sender would
        get a bounce later for what it could be told now. Postfix's cleanup adds
        "From: <envelope sender>" for its own submitters (local_header_rewrite_clients),
        as nullmailer and msmtp do: cron jobs and printers count on it. The envelope sender
        passed the MAIL check, so the added From: is one the user may send as. A
        restricted user is the exception: its From: is the address its recipients see and
        the one the operator pinned, so the application must write it; a message without
        one is refused (header_from), which tells a misconfigured application at once.
        """
        return None if _restricted(user) else mail_from

    def header_from(self, user: User | None, from_value: str | None,
                    sender_value: str | None) -> Verdict:
        """The From: and Sender: a restricted user wrote, checked against its rights."""
        if not _restricted(user):
            return ACCEPT  # (a From: was added from the envelope if it was missing)
        assert user is not None
        if from_value is None:
            return Verdict(HEADER_FROM_MISSING, f"no From: header from {user.name}")
        if not self._policy.check_header_from:
            return ACCEPT
        try:
            author = mailboxes.read("From", from_value)
            sender = None if sender_value is None else mailboxes.read("Sender", sender_value)
        except mailboxes.Ambiguous as e:
            return Verdict(HEADER_FROM_AMBIGUOUS, str(e))
        # RFC 5322 3.6.2: several authors need a Sender:, and a Sender: is one mailbox.
        if len(author.addresses) > 1 and sender is None:
            return Verdict(HEADER_FROM_AMBIGUOUS, "From: several mailboxes and no Sender:")
        if sender is not None and len(sender.addresses) != 1:
            return Verdict(HEADER_FROM_AMBIGUOUS, "Sender: not exactly one mailbox")
        for reply, field_name, found in ((HEADER_FROM_NOT_ALLOWED, "From", author),
                                         (HEADER_SENDER_NOT_ALLOWED, "Sender", sender)):
            if found is None:
                continue
            # Every address a reader could take for the sender: the mailboxes, and
            # address-like text in display names and comments.
            for address in (*found.addresses, *map(mailboxes.claimed_as, found.claimed)):
                if not matches(address, user.allowed_senders):
                    return Verdict(reply, f"{field_name}: {address} not in allowed_senders "
                                          f"of {user.name}")
        return ACCEPT

    async def recipient(self, address: str, accepted_so_far: int) -> Verdict:
        if accepted_so_far >= self._limits.max_recipients:
            return Verdict(TOO_MANY_RECIPIENTS, f"over limits.max_recipients "
                                                f"({self._limits.max_recipients})")
        if self._allowed_rcpts and not matches(address, self._allowed_rcpts):
            return Verdict(RECIPIENT_NOT_ALLOWED, "not in policy.allowed_recipients")
        if self._policy.redirect_all_to:
            return ACCEPT  # the envelope is rewritten at commit; originals do not get mail
        if self._suppression is not None:
            # Inline, not in a thread: a primary-key lookup in SQLite's page cache takes
            # microseconds (bench/RESULTS.md), less than the hop to a thread would.
            entry = self._suppression.lookup(address)
            if entry is not None:
                reason = f"suppressed ({entry.reason}, {entry.address})"
                if self._drop:
                    return Verdict(None, reason, drop=True)
                return Verdict(RECIPIENT_SUPPRESSED, reason)
        return ACCEPT

    def final_recipients(self, rcpts: Sequence[str]) -> tuple[str, ...]:
        """The envelope recipients that are actually queued (staging redirect applied)."""
        if self._policy.redirect_all_to:
            return (self._policy.redirect_all_to,)
        return tuple(rcpts)

    def ses_headers_allowed(self, user: User | None) -> bool:
        """Whether the message's X-SES-* headers may choose its configuration set and tags.

        Today's behaviour (they may) stays for users who may send as anyone: they can
        choose everything else too. A restricted user is an application the operator
        boxed in; its configuration set is where its events and reputation are watched,
        and a header must not take it elsewhere (SES would also take one named in the
        header over the SMTP transport), so by default its headers are removed unread.
        """
        return ses_headers_choice(user, self._policy)[0] == "allow"

    def ses_options(self, user: User | None, header_set: str | None,
                    header_tags: Sequence[tuple[str, str]]
                    ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """Configuration set and tags: header, then the user's, then the global default."""
        config_set = header_set or (user.configuration_set if user else None) \
            or self._policy.configuration_set
        tags = dict(self._policy.tags)
        if user is not None:
            tags.update(user.tags)
        tags.update(header_tags)
        return config_set, tuple(tags.items())


def ses_headers_choice(user: User | None, policy: PolicyConfig) -> tuple[str, str]:
    """Whether *user*'s X-SES-* headers are obeyed ("allow" or "ignore"), and whose choice
    that is: the user's own ("user"), policy.ses_headers ("policy") or its "auto" rule
    (see Policy.ses_headers_allowed). `ses-relay user list` shows both."""
    if user is not None and user.ses_headers:
        return user.ses_headers, "user"
    if policy.ses_headers != "auto":
        return policy.ses_headers, "policy"
    return ("ignore" if _restricted(user) else "allow"), "auto"


def _restricted(user: User | None) -> bool:
    """A user limited to some senders (the rules for who may send as whom apply)."""
    return user is not None and bool(user.allowed_senders)
