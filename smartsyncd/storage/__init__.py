"""Server storage: metadata (users, engagements, grants, sessions, change log) and chunks.

``api.ServerStore`` is the one async interface the web layer, auth and the admin CLI use.
"""
