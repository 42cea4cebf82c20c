"""Messenger and Instagram messaging connector (Graph webhooks in, Send API out)."""
