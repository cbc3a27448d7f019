"""The one compiled part: the DATA check's fast path (relay/smtp/_plainlines.c).

Optional: where it cannot be built (no C compiler or Python headers), the install goes on
and the relay uses the same check written as a regex, 7-16x slower per byte (see
relay/smtp/plainlines.py). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("relay.smtp._plainlines", ["relay/smtp/_plainlines.c"], optional=True),
])
