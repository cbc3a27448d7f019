"""The SMTP front end: listeners, the protocol adaptations, and the thin session handler."""
