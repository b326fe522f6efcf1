"""twistd wiring of the server: configuration, TLS, logging observers, thread pools, services.

Only this package and ``smartsyncd.cli`` use the global reactor; everything below receives the
reactor, clocks and thread-pool runners as arguments.
"""
