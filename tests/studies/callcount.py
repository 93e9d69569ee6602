"""Generator calls counted by tests (a module, so the count is not part of a fingerprint)."""

CALLS: list = []
