"""``omnigate bench [--json] [--only NAME]``: throughput and latency, each figure as a ratio to a raw baseline.

Each figure is measured against a raw baseline in the same run on the same
machine (so the ratio, not the absolute number, is what travels), and also
as ``ratio_to_ingest``: its rate over ``ingest_http``'s in the same run.

The package holds everything the bench needs and nothing else imports it:

- ``cli``: the command line (``main``); ``runner``: the registry of figure
  groups (``"module:function"`` refs) and the run;
- ``load``: the HTTP load client, the bench servers' processes, the raw write
  floor; ``server``: the bench HTTP servers (``python -m gateway.bench.server``);
- one module per figure group: ``ingest`` (``ingest_http`` and the channel
  callbacks), ``pipeline`` (``pipeline`` in the production configuration and
  ``pipeline_bare``), ``sustained`` (open-loop end to end), ``assign_store``
  (``assign_next_store``), ``assign`` (the pure chooser), ``rules``,
  ``email_parse``, ``email_smtp``, ``wechat``, ``telegram``, ``social``
  (``social_webhook``), ``api_list`` (``api_ticket_list_100k``), ``calllog``
  (``calllog_rows``), ``webhooks`` (``webhook_delivery``).
"""

from __future__ import annotations


def main(argv: list[str], prog: str = "omnigate bench") -> int:
    from gateway.bench.cli import main as cli_main

    return cli_main(argv, prog)
