"""Pure tests: every email payload of ../shared/corpus through the parser.

One case per MANIFEST.tsv row; each checks every fact of the row's
``expected`` column that maps onto the Inbound (more than corpus_check.py
does): sender address and name, subject, charset-derived text, ids,
reference count, attachment count, DSN → ``auto == "bounce"``, content
type, declared charset, the stdlib defects the row names.
"""

from __future__ import annotations

import re
import unicodedata

import pytest

from connectors.base import PayloadRejected
from connectors.email.parse import parse
from tests.corpus import params

_CJK_CHARSETS = ("gb2312", "gbk", "gb18030", "big5", "iso-2022-jp", "shift_jis", "iso-gb2312")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


def _norm(text: str | None) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "")).strip().strip("<>").lower()


def _expected_name(expected: str) -> str | None:
    """The display name in ``from=addr (Name - comment)`` / ``(Name, comment)``."""
    m = re.search(r"(?:^|; )from=\S+@\S+ \(([^()]*)\)", expected)
    if not m:
        return None
    return re.split(r" - |, ", m.group(1))[0]


@pytest.mark.parametrize("corpus_row", params("email"), indirect=True)
def test_corpus_row(corpus_row):
    raw, facts, expected = corpus_row.read(), corpus_row.facts(), corpus_row.expected
    if corpus_row.invalid:
        with pytest.raises(PayloadRejected):
            parse(raw, corpus_row.context)
        return
    inbounds = parse(raw, corpus_row.context)
    assert len(inbounds) == 1
    msg = inbounds[0]
    assert msg.channel == "email" and msg.kind == "message" and msg.external_id

    if "@" in facts.get("from", ""):
        assert msg.sender.kind == "email"
        assert msg.sender.value == facts["from"].split()[0].lower()
        name = _expected_name(expected)
        if name:
            assert _norm(msg.sender.name) == _norm(name)
    if "=?" in facts.get("subject", ""):  # the manifest quotes the raw encoded word
        assert "=?" not in msg.subject and msg.subject.startswith(facts["subject"].split("=?")[0].strip())
    elif "subject" in facts:
        assert _norm(msg.subject).startswith(_norm(facts["subject"]))
    if "subject_recovery" in facts:
        recovered = re.search(r'recovers "([^"]+)"', expected).group(1)
        assert _norm(msg.subject) == _norm(recovered)
    if "message_id" in facts:
        assert msg.thread.message_id == facts["message_id"].strip("<>")
        assert msg.external_id == msg.thread.message_id
    if "in_reply_to" in facts:
        assert msg.thread.in_reply_to == facts["in_reply_to"].strip("<>")
    if "references_count" in facts:
        assert len(msg.thread.references) == int(facts["references_count"])
    if facts.get("attachments", "").isdigit():
        assert len(msg.attachments) == int(facts["attachments"])
        for a in msg.attachments:
            assert a.data is not None and a.size == len(a.data) and len(a.sha256) == 64
    if facts.get("kind", "").startswith("dsn"):
        assert msg.auto == "bounce"
        assert msg.meta.get("dsn_status") or msg.meta.get("auto_reason")
    if "content_type" in facts and "outlook" not in corpus_row.path:
        assert msg.meta["content_type"] == facts["content_type"]
    if "charset" in facts:
        declared = facts["charset"].split()[0].split(",")[0]
        assert declared in msg.meta.get("charset", "").split(",")
    if "py_email_defects" in facts:
        for defect in facts["py_email_defects"].split(","):
            assert defect in msg.defects
    if any(c in facts.get("charset", "") for c in _CJK_CHARSETS) and msg.text:
        assert _CJK.search(msg.text), "CJK body decoded without CJK characters"
    for field in (msg.text, msg.subject, msg.sender.name):
        assert "\ufffd" not in (field or ""), "replacement characters: a charset went wrong"
        assert "\x1b" not in (field or ""), "ISO-2022 escapes left undecoded"
