"""The email channel: SMTP push and IMAP poll in ``client.py``, the pure
RFC 5322/MIME parser in ``parse.py`` (with its helpers ``charsets``,
``headers``, ``attachments``, ``htmltext``, ``quotes``, ``dsn`` and
``outlook``), and ``bench.py`` for the parse-throughput figure."""
