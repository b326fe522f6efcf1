"""Process and reactor plumbing shared by the server and the client library.

It sits below every layer (web, storage, client...) and imports nothing else of smartsyncd:
``tlsbatching`` (TLS moving data in large pieces), ``gcthreshold`` (fewer GC passes during bulk
work), ``blocking`` (the type of a run-off-the-reactor callable) and ``twistedcompat`` (the one place that names Twisted's private attributes and modules,
and checks at start-up that they still exist).
"""
