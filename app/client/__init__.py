"""`tuneforge files | jobs | predict | models`: a client of a running service, over HTTP only.

Nothing here reads the server's settings, database or data folder: the client knows only a
URL and an API key, so it works the same against a service on this machine or elsewhere.
"""
