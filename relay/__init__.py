"""ses-relay: a durable local SMTP relay that delivers to Amazon SES."""

__version__ = "0.1.0"
