"""WhatsApp Cloud API connector (webhook in, Graph API out)."""
