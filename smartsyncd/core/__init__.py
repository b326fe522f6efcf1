"""Pure sync rules: no I/O, no reactor, no clock reads (time is passed in)."""
