"""A tiny FileCheck: match `// CHECK:` lines of a test file against a tool's output.

    // CHECK:      text         found on a later line than the previous match
    // CHECK-NEXT: text         on the line right after the previous match
    // CHECK-SAME: text         on the same line as the previous match, after it
    // CHECK-NOT:  text         absent between the previous match and the next one (or the end)

Patterns are literal text with `{{regex}}` parts; runs of whitespace compare equal to one space.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_CHECK_LINE = re.compile(r"^\s*//\s*CHECK(?P<kind>-NEXT|-NOT|-SAME)?:\s?(?P<pattern>.*)$")


class CheckFailure(AssertionError):
    pass


@dataclass(frozen=True)
class Check:
    kind: str  # "CHECK", "CHECK-NEXT", "CHECK-NOT", "CHECK-SAME"
    pattern: str
    line_no: int
    regex: re.Pattern

    def __str__(self) -> str:
        return f"line {self.line_no}: // {self.kind}: {self.pattern}"


def parse_checks(text: str, first_line: int = 1) -> list[Check]:
    checks = []
    for offset, line in enumerate(text.splitlines()):
        m = _CHECK_LINE.match(line)
        if m:
            kind = "CHECK" + (m.group("kind") or "")
            pattern = m.group("pattern").strip()
            checks.append(Check(kind, pattern, first_line + offset, compile_pattern(pattern)))
    return checks


def compile_pattern(pattern: str) -> re.Pattern:
    parts = []
    for i, piece in enumerate(re.split(r"\{\{(.*?)\}\}", pattern)):
        if i % 2:
            parts.append(f"(?:{piece})")
        else:
            parts.append(r"\s+".join(re.escape(word) for word in re.split(r"\s+", piece)))
    return re.compile("".join(parts))


def filecheck(output: str, checks: list[Check]) -> None:
    """Raise `CheckFailure` with the output and the first check that fails."""
    lines = output.splitlines()
    if not checks:
        raise CheckFailure("no CHECK lines: a test must say what it expects")
    last_line, last_end = -1, 0
    nots: list[Check] = []
    for check in checks:
        if check.kind == "CHECK-NOT":
            nots.append(check)
            continue
        found = _find(check, lines, last_line, last_end)
        if found is None:
            _fail(check, "expected text not found", lines, last_line)
        line, start, end = found
        _check_nots(nots, lines, last_line, last_end, line, start)
        nots = []
        last_line, last_end = line, end
    _check_nots(nots, lines, last_line, last_end, len(lines), 0)


def _find(check: Check, lines: list[str], last_line: int, last_end: int) -> Optional[tuple[int, int, int]]:
    if check.kind == "CHECK-SAME":
        if last_line < 0:
            return None
        m = check.regex.search(lines[last_line], last_end)
        return (last_line, m.start(), m.end()) if m else None
    if check.kind == "CHECK-NEXT":
        i = last_line + 1
        m = check.regex.search(lines[i]) if i < len(lines) else None
        return (i, m.start(), m.end()) if m else None
    for i in range(last_line + 1, len(lines)):
        m = check.regex.search(lines[i])
        if m:
            return i, m.start(), m.end()
    return None


def _check_nots(nots: list[Check], lines: list[str], from_line: int, from_col: int, to_line: int,
                to_col: int) -> None:
    for check in nots:
        for i in range(max(from_line, 0), min(to_line + 1, len(lines))):
            text = lines[i]
            lo = from_col if i == from_line else 0
            hi = to_col if i == to_line else len(text)
            if check.regex.search(text[lo:hi]):
                _fail(check, "excluded text found", lines, i)


def _fail(check: Check, what: str, lines: list[str], near: int) -> None:
    numbered = "\n".join(f"{'>>' if i == near else '  '} {i + 1:3d} | {line}" for i, line in enumerate(lines))
    raise CheckFailure(f"{what} for {check}\noutput:\n{numbered}")
