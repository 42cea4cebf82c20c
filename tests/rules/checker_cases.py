"""Broken rule files and the exact error the checker gives for each.

Each case: (name, {file: YAML}, expected error lines). The root file below is
prepended as ``00.yaml`` unless a case gives its own ``00.yaml``.
"""

ROOT = """\
route: {id: root, title: Root, owner: ops}
"""


def rule(extra: str) -> dict[str, str]:
    """One rule file (10.yaml) with a rule whose body ends with ``extra``."""
    return {"10.yaml": "routes:\n  - id: r\n    title: t\n    owner: o\n" + extra}


CASES = [
    # ---- YAML and structure
    ("yaml syntax", {"10.yaml": "routes: [\n"}, ["10.yaml:2:1: YAML syntax: did not find expected node content"]),
    ("file not a mapping", {"10.yaml": "- a\n"}, ["10.yaml:1:1: rule file must be a mapping, got a list"]),
    ("unknown top-level key", {"10.yaml": "rutes: []\n"}, ["10.yaml:1:1: unknown key 'rutes' in rule file (did you mean 'routes'?)"]),
    ("unknown key, no close match", {"10.yaml": "zzz: 1\n"},
     ["10.yaml:1:1: unknown key 'zzz' in rule file; expected one of: intervals, lists, route, routes, templates, timezone"]),
    ("duplicate key", {"10.yaml": "lists: {a: [x]}\nlists: {b: [y]}\n"}, ["10.yaml:2:1: duplicate key 'lists' in rule file"]),
    ("non-string key", {"10.yaml": "lists: {[a]: [x]}\n"}, ["10.yaml:1:9: a key must be a string, got a list"]),
    ("no root", {"00.yaml": "lists: {a: [x]}\n"}, ["00.yaml:1:1: no root route: one file must define `route:`"]),
    ("second root", {"10.yaml": "route: {id: root2, title: t, owner: o}\n"},
     ["10.yaml:1:8: a second root route: the root is already defined at 00.yaml:1:13"]),
    ("matchers on the root", {"00.yaml": "route: {id: root, title: R, owner: o, matchers: ['channel = email']}\n"},
     ["00.yaml:1:39: the root route matches every message: 'matchers' is not allowed here"]),
    ("missing title and owner", {"10.yaml": "routes:\n  - id: r\n"},
     ["10.yaml:2:5: rule lacks the required key 'owner'", "10.yaml:2:5: rule lacks the required key 'title'"]),
    ("rule typo", rule("    priorty: high\n"), ["10.yaml:5:5: unknown key 'priorty' in rule (did you mean 'priority'?)"]),
    ("rule not a mapping", {"10.yaml": "routes: [just-a-string]\n"}, ["10.yaml:1:10: rule must be a mapping, got a string"]),
    ("routes not a list", {"10.yaml": "routes: {a: 1}\n"}, ["10.yaml:1:9: routes must be a list, got a mapping"]),
    ("bad id", {"10.yaml": "routes:\n  - {id: Bad Id, title: t, owner: o}\n"},
     ["10.yaml:2:10: rule id 'Bad Id' must be lower-case letters, digits, '_', '.', '-'"]),
    ("empty title", {"10.yaml": "routes:\n  - {id: r, title: '', owner: o}\n"}, ["10.yaml:2:20: title must not be empty"]),
    ("duplicate rule id", {"10.yaml": "routes:\n  - {id: r, title: t, owner: o, matchers: ['tier = a']}\n  - {id: r, title: t, owner: o}\n"},
     ["10.yaml:3:10: duplicate rule id 'r' (first defined at 10.yaml:2:10)"]),
    ("unreachable after a catch-all", {"10.yaml": "routes:\n  - {id: all, title: t, owner: o}\n  - {id: late, title: t, owner: o}\n"},
     ["10.yaml:3:10: rule 'late' is unreachable: rule 'all' above it (10.yaml:2:10) matches every message and does not continue"]),
    # ---- types
    ("enabled not a boolean", rule("    enabled: maybe\n"), ["10.yaml:5:14: enabled must be true or false, got a string"]),
    ("team an integer", rule("    team: 42\n"), ["10.yaml:5:11: team must be a string, got an integer (quote it)"]),
    ("team null", rule("    team:\n"), ["10.yaml:5:10: team must be a string, got null"]),
    ("tags not a list", rule("    tags: vip\n"), ["10.yaml:5:11: tags must be a list, got a string"]),
    ("tag not a string", rule("    tags: [1]\n"), ["10.yaml:5:12: an item of tags must be a string, got an integer (quote it)"]),
    ("priority value", rule("    priority: critical\n"), ["10.yaml:5:15: priority is one of urgent, high, normal, low, got 'critical'"]),
    ("skill level type", rule("    skills: {billing: high}\n"), ["10.yaml:5:23: level of skill 'billing' must be an integer, got a string"]),
    ("skill level range", rule("    skills: {billing: 11}\n"), ["10.yaml:5:23: level of skill 'billing' must be between 1 and 10, got 11"]),
    ("assign both", rule("    assign: {agent: a, team: b}\n"), ["10.yaml:5:13: assign takes exactly one of agent or team"]),
    ("assign typo", rule("    assign: {agnet: a}\n"),
     ["10.yaml:5:13: assign takes exactly one of agent or team", "10.yaml:5:14: unknown key 'agnet' in assign (did you mean 'agent'?)"]),
    # ---- matchers
    ("matcher not a string", rule("    matchers: [{channel: email}]\n"), ["10.yaml:5:16: matcher must be a string, got a mapping"]),
    ("matcher unreadable", rule("    matchers: ['channel email']\n"),
     ["10.yaml:5:16: cannot read matcher 'channel email'; write FIELD OP VALUE with OP one of =, !=, =~, !~, in, not in"]),
    ("matcher field typo", rule("    matchers: ['chanel = email']\n"), ["10.yaml:5:16: unknown matcher field 'chanel' (did you mean 'channel'?)"]),
    ("operator for the field", rule("    matchers: ['kind =~ mess']\n"), ["10.yaml:5:16: operator '=~' does not apply to 'kind'; use one of =, !=, in, not in"]),
    ("matcher without value", rule("    matchers: ['channel =']\n"), ["10.yaml:5:16: matcher 'channel =' lacks a value"]),
    ("in without a list", rule("    matchers: ['channel in email, sms']\n"),
     ["10.yaml:5:16: after 'in' write a [list] or the name of a defined list, got 'email, sms'"]),
    ("enum value", rule("    matchers: ['ticket = old']\n"), ["10.yaml:5:16: ticket is one of new, follow_up, got 'old'"]),
    ("bool value", rule("    matchers: ['attachments = yes']\n"), ["10.yaml:5:16: attachments compares with true or false, got 'yes'"]),
    ("weekday", rule("    matchers: ['weekday in [mon-fry]']\n"), ["10.yaml:5:16: unknown weekday 'fry'; use mon, tue, wed, thu, fri, sat, sun"]),
    ("unclosed list", rule("    matchers: ['tier in [a, b']\n"), ["10.yaml:5:16: list '[a, b' lacks its closing ']'"]),
    ("empty list item", rule("    matchers: ['tier in [a,,b]']\n"), ["10.yaml:5:16: empty item in list '[a,,b]'"]),
    ("unbalanced quote", rule("    matchers: ['subject = \"hi']\n"), ["10.yaml:5:16: unbalanced quote in '\"hi'"]),
    ("invalid regex", rule("    matchers: ['subject =~ \"(refund\"']\n"),
     ["10.yaml:5:16: invalid regex '(refund': missing ), unterminated subpattern at position 0"]),
    ("hours syntax", rule("    matchers: ['time in [9-18]']\n"), ["10.yaml:5:16: hours '9-18': '9' is not HH:MM"]),
    ("hours without dash", rule("    matchers: ['time in [09:00]']\n"), ["10.yaml:5:16: hours '09:00' must be HH:MM-HH:MM"]),
    ("hours empty", rule("    matchers: ['time in [09:00-09:00]']\n"), ["10.yaml:5:16: hours '09:00-09:00' are empty (start equals end)"]),
    # ---- keywords
    ("keywords empty", rule("    keywords: {in: [subject]}\n"), ["10.yaml:5:15: keywords needs `any: [words]` and/or `lists: [names]`"]),
    ("keywords typo", rule("    keywords: {anyy: [x]}\n"),
     ["10.yaml:5:15: keywords needs `any: [words]` and/or `lists: [names]`", "10.yaml:5:16: unknown key 'anyy' in keywords (did you mean 'any'?)"]),
    ("keyword star", rule("    keywords: {any: ['re*fund']}\n"), ["10.yaml:5:22: keyword 're*fund': '*' may only end a word (prefix match)"]),
    ("keyword field", rule("    keywords: {any: [x], in: [body]}\n"), ["10.yaml:5:31: keywords look in subject and text, not 'body'"]),
    # ---- references
    ("undefined list", rule("    keywords: {lists: [refund_wrods]}\n"), ["10.yaml:5:24: undefined list 'refund_wrods'; no list is defined"]),
    ("undefined list in a matcher", {"10.yaml": "lists: {vips: [a]}\nroutes:\n  - {id: r, title: t, owner: o, matchers: ['sender in vip']}\n"},
     ["10.yaml:3:44: undefined list 'vip'; defined: vips"]),
    ("undefined interval", rule("    matchers: ['time in office_hours']\n"), ["10.yaml:5:16: undefined interval or calendar 'office_hours'; no interval or calendar is defined"]),
    ("undefined template", rule("    auto_reply: ack\n"), ["10.yaml:5:17: undefined template 'ack'; no template is defined"]),
    # ---- definitions
    ("list not a list", {"10.yaml": "lists: {a: x}\n"}, ["10.yaml:1:12: list 'a' must be a list, got a string"]),
    ("bad list name", {"10.yaml": "lists: {'my list': [x]}\n"}, ["10.yaml:1:9: list name 'my list' must match [A-Za-z_][A-Za-z0-9_.-]*"]),
    ("list defined twice", {"10.yaml": "lists: {a: [x]}\n", "20.yaml": "lists: {a: [y]}\n"}, ["20.yaml:1:9: list 'a' is already defined at 10.yaml:1:9"]),
    ("timezone unknown", {"10.yaml": "timezone: Asia/Beijing\n"}, ["10.yaml:1:11: unknown time zone 'Asia/Beijing' (an IANA name such as Asia/Shanghai)"]),
    ("timezone twice", {"10.yaml": "timezone: UTC\n", "20.yaml": "timezone: UTC\n"}, ["20.yaml:1:11: timezone is already set at 10.yaml:1:11"]),
    ("interval without times", {"10.yaml": "intervals: {office: {timezone: UTC}}\n"}, ["10.yaml:1:21: interval 'office' lacks the required key 'times'"]),
    ("interval with no entries", {"10.yaml": "intervals: {office: {times: []}}\n"}, ["10.yaml:1:29: interval 'office' needs at least one entry in times"]),
    ("interval entry typo", {"10.yaml": "intervals: {office: {times: [{days: [mon]}]}}\n"},
     ["10.yaml:1:31: unknown key 'days' in a times entry (did you mean 'weekdays'?)"]),
    ("interval hours", {"10.yaml": "intervals: {office: {times: [{hours: ['25:00-26:00']}]}}\n"},
     ["10.yaml:1:39: hours '25:00-26:00': '25:00' is not HH:MM"]),
    ("template no variant", {"10.yaml": "templates: {ack: {default_language: en}}\n"},
     ["10.yaml:1:18: template 'ack' needs at least one language variant (zh-CN: {text: …})"]),
    ("template key", {"10.yaml": "templates: {ack: {defualt_language: en, en: {text: hi}}}\n"},
     ["10.yaml:1:19: unknown key 'defualt_language' in template 'ack': expected default_language or a language tag such as zh-CN or en"]),
    ("template needs a default", {"10.yaml": "templates: {ack: {en: {text: hi}, zh-CN: {text: 你好}}}\n"},
     ["10.yaml:1:18: template 'ack' has several languages: say which is the default_language"]),
    ("template default missing", {"10.yaml": "templates: {ack: {default_language: fr, en: {text: hi}}}\n"},
     ["10.yaml:1:37: default_language 'fr' is not one of the template's languages (en)"]),
    ("template variant needs text", {"10.yaml": "templates: {ack: {en: {subject: hi}}}\n"},
     ["10.yaml:1:23: template 'ack' language 'en' lacks the required key 'text'"]),
    ("template placeholder", {"10.yaml": "templates: {ack: {en: {text: 'Hi {name}'}}}\n"},
     ["10.yaml:1:30: unknown placeholder {name}; known: {contact_name}, {ticket_number}"]),
    ("template brace", {"10.yaml": "templates: {ack: {en: {text: 'Hi {contact_name'}}}\n"},
     ["10.yaml:1:30: bad placeholder: expected '}' before end of string (write {{ and }} for literal braces)"]),
]
