"""LINE Messaging API connector (webhook in, push API out)."""
