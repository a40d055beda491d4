"""Event sources: each only wakes the core and carries evidence."""


class SourceUnavailable(Exception):
    """A source cannot start; the message says what is missing and what to do."""
