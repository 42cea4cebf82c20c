"""Local stand-ins for remote platform APIs that tests cannot reach (test code only).

Each speaks its platform's real protocol (paths, parameters, JSON shapes,
error codes) on 127.0.0.1, so connectors are exercised through their real
client libraries.
"""
