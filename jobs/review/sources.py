"""What the reviews say when a vendor's API or a repository cannot be read."""

from __future__ import annotations


class SourceError(Exception):
    """A source could not be read; the message is the reason, and the review reports it as a gap."""
