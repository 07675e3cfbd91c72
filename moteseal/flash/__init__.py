"""Building a device's flash bundle and deploying it to a board (CPython only)."""
