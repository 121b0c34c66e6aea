"""Text hygiene: invalid UTF-8 (U+FFFD), mojibake, control characters, HTML remnants."""

from __future__ import annotations

import re
from typing import Any

from tuneloop.data.audit.findings import Finding
from tuneloop.data.audit.pii import strings

CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    # U+FFFD in the text: characters lost before the file was written. Bytes of this file that
    # are not UTF-8 are reported with file:line by `format.encoding` (run.py drops them here).
    "invalid_utf8": (re.compile("\ufffd"), "U+FFFD replacement characters (lost text)"),
    # UTF-8 read as Latin-1/cp1252: "Ã©" for é, "â€™" for a curly quote, "Â " for a NBSP.
    "mojibake": (re.compile("Ã[\u0080-\u00bf]|â€[\u0080-\u00bf\u2018-\u201d\u2122œ]"
                            "|Â[\u00a0-\u00bf]"), "mojibake (UTF-8 decoded as Latin-1)"),
    "control_chars": (re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029]"),
                      "control or invisible characters"),
    "html": (re.compile(r"</?(?:br|p|div|span|a|b|i|strong|em|li|ul|ol|table|tr|td|h\d|img)\b"
                        r"[^>]*>|&(?:amp|lt|gt|quot|nbsp|apos|#\d{2,5});", re.IGNORECASE),
             "HTML tags or entities"),
}


def hygiene_findings(rows: list[tuple[str, Any]]) -> list[Finding]:
    """One finding per kind of dirt, with examples of the offending snippets."""
    out = []
    for kind, (pattern, what) in CHECKS.items():
        hits: dict[str, str] = {}
        for rid, data in rows:
            for s in strings(data):
                m = pattern.search(s)
                if m:
                    a = max(0, m.start() - 30)
                    hits[rid] = repr(s[a:m.end() + 30])
                    break
        if hits:
            severity = "warning" if kind in ("invalid_utf8", "mojibake") else "info"
            out.append(Finding(f"hygiene.{kind}", severity, list(hits),
                               f"{len(hits)} records contain {what}",
                               {"examples": dict(list(hits.items())[:20])}))
    return out
