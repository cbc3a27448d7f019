"""Every reply the relay composes, in one place: basic code, enhanced code, generic text.

Internals never appear here; the log says what happened, the client learns only what it
needs to act on (retry later, fix the address, give up).
"""

from __future__ import annotations

MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
ACCEPTED = "250 2.0.0 Ok"
NO_SMTPUTF8 = "555 5.6.7 SMTPUTF8 is not supported"

TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
TLS_ACTIVE = "554 5.5.1 TLS already active"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_BAD_ENCODING = "501 5.5.2 Cannot decode AUTH data"
AUTH_ABORTED = "501 5.7.0 Authentication aborted"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"  # RFC 4954 6

BAD_ADDRESS = "553 5.1.3 Bad address syntax"
NON_ASCII_ADDRESS = "553 5.6.7 Non-ASCII addresses are not supported"

TOO_BIG = "552 5.3.4 Message too big"
HEADER_TOO_BIG = "552 5.3.4 Message header too big"
LINE_TOO_LONG = "554 5.6.0 Message has a line longer than 998 characters"
BARE_CR = "554 5.6.0 Message contains a bare CR; lines must end with CRLF"
NUL_BYTE = "554 5.6.0 Message contains a NUL byte"
BARE_LF = "554 5.6.0 Bare LF received; lines must end with CRLF"
NOT_SMTP = "554 5.7.0 This is an SMTP server"
TOO_SLOW = "421 4.4.2 Data transfer too slow, closing connection"
IDLE = "421 4.4.2 Timeout exceeded, closing connection"
# Input that arrived before DATA was answered (RFC 2920: DATA ends a group; Postfix's
# smtpd_forbid_unauth_pipelining, its default since 3.9, answers so and hangs up).
OUT_OF_SYNC = "554 5.5.0 Error: SMTP protocol synchronization"
# Never the command read back: aiosmtpd echoes it, NULs and bare CRs included.
UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
# A server that hangs up says 421 (RFC 5321 3.8); aiosmtpd says 502 and closes.
TOO_MANY_UNKNOWN = "421 4.7.0 Too many unrecognized commands, closing connection"
# BDAT without CHUNKING offered: its chunk cannot be told from commands (Postfix, CHUNKING off).
BDAT_REFUSED = "521 5.5.1 Error: command not implemented"
VRFY_BAD_ADDRESS = "501 5.1.3 Bad address syntax"  # Postfix's; aiosmtpd echoed the argument

# Enhanced codes for the replies aiosmtpd composes itself without one (RFC 3463 classes).
ENHANCED_BY_CODE = {
    "214": "2.0.0", "220": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0",
    "252": "2.0.0", "354": "", "421": "4.3.0", "450": "4.2.0", "451": "4.3.0",
    "452": "4.3.1", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
    "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11",
    "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
