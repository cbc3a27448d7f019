"""SES feedback: bounce, complaint and delivery notifications, and what the relay does with them.

``notifications`` parses SES events, ``sns`` verifies SNS HTTP(S) deliveries, ``sqs`` polls a
queue, and ``processor`` turns events into suppression-list entries.
"""
