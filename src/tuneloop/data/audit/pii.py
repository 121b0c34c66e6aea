"""Personal data: e-mails, phones, Luhn-valid card numbers, IBANs (mod 97), IPs, US SSNs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

from tuneloop.data.audit.findings import Finding

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*")
# A separator is required between groups so that plain long numbers (ids, amounts) do not match.
PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                   r"\d{3,4}[ .-]\d{3,4}\b(?![ .-]?\d)")
KINDS = ("email", "credit_card", "iban", "ssn", "ip_address", "phone")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    n = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


def _ip_ok(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) spans; earlier kinds win where spans overlap (a card is not a phone)."""
    taken: list[tuple[int, int]] = []
    out = []

    def add(kind: str, m: re.Match) -> None:
        s, e = m.span()
        if any(s < b and a < e for a, b in taken):
            return
        taken.append((s, e))
        out.append((kind, s, e))

    for m in EMAIL.finditer(text):
        add("email", m)
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            add("credit_card", m)
    for m in IBAN.finditer(text):
        if iban_ok(m.group()):
            add("iban", m)
    for m in SSN.finditer(text):
        add("ssn", m)
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            if _ip_ok(m.group()):
                add("ip_address", m)
    for m in PHONE.finditer(text):
        if sum(c.isdigit() for c in m.group()) >= 7:
            add("phone", m)
    return sorted(out, key=lambda t: t[1])


def redact(text: str) -> str:
    """Replace every PII span by a tag such as [EMAIL]."""
    for kind, s, e in sorted(find_pii(text), key=lambda t: -t[1]):
        text = text[:s] + f"[{kind.upper()}]" + text[e:]
    return text


def strings(value: Any) -> Iterator[str]:
    """Every string inside a raw row (nested lists and dicts included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def _mask(value: str) -> str:
    # Evidence must not re-publish the data it warns about: keep only the edges.
    return value[:2] + "*" * max(0, len(value) - 4) + value[-2:] if len(value) > 4 else "****"


def pii_findings(rows: list[tuple[str, Any]]) -> list[Finding]:
    """Counts and masked examples per PII kind, over every string of every (id, raw row)."""
    hits: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    for rid, data in rows:
        for s in strings(data):
            for kind, a, b in find_pii(s):
                hits[kind].setdefault(rid, []).append(s[a:b])
    return [Finding(f"pii.{kind}", "warning", list(h),
                    f"{sum(map(len, h.values()))} {kind.replace('_', ' ')}s in {len(h)} "
                    "records; `tuneloop data fix --redact` masks them",
                    {"count": sum(map(len, h.values())),
                     "examples": {i: [_mask(v) for v in vs[:3]] for i, vs in list(h.items())[:20]}})
            for kind, h in hits.items() if h]
