"""Instagram messaging: the Messenger connector's code (connectors/messenger)
under its own channel name, webhook URL, secrets and accounts."""
