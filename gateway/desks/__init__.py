"""Two-way sync with the help desk omnigate runs beside (issue 14,
CONTRACTS.md "Help-desk sync").

- :mod:`.base`: the uniform shape every desk has (:class:`~.base.DeskClient`:
  find/create a ticket, add a comment or internal note, set a status, list a
  ticket's comments, list tickets changed since a cursor) and the HTTP client
  they share (auth, timeout, 429/``Retry-After``, pagination helpers);
- :mod:`.zammad`, :mod:`.zendesk`, :mod:`.freshdesk`: each desk's REST API;
  :mod:`.generic`: a JSON template per event POSTed to an in-house desk;
- :mod:`.service`: the sync — outbound, each desk is a delivery target of the
  webhook machinery (its own queue, cursor, per-ticket order, back-off and
  dead letters: endpoint ``desk:<name>``); the way back (push nudges at
  ``POST /channels/desks/<name>``, verified by the desk's own scheme, and
  polling of the desk's incremental change API) reads the desk's comments
  and statuses and acts through the store (replies leave by the customer's
  channel through the outbox).
"""
