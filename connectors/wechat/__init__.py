"""WeChat Official Account channel: callbacks in, customer-service messages out.

Also home of what WeCom shares with it: safe XML (``safexml``), signatures
and AES envelopes (``envelope``), access tokens (``tokens``) and the JSON API
session (``api``).
"""
