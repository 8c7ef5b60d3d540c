#!/usr/bin/env python3
"""`make lint`: no file under src/ over 600 lines, no function outside tests
over 70 (rustfmt layout: a body closes at its `fn`'s indentation)."""
import pathlib
import re
import sys

MAX_FILE, MAX_FN = 600, 70
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def long_functions(lines):
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return
        m = FN.match(line)
        if not m:
            continue
        indent = m.group(1)
        end = next((j for j in range(i, len(lines)) if lines[j].rstrip().endswith((";", "{"))), i)
        if lines[end].rstrip().endswith(";"):
            continue  # a declaration without a body
        close = next((j for j in range(end + 1, len(lines)) if lines[j].rstrip() == indent + "}"), None)
        if close is not None and close - i + 1 > MAX_FN:
            yield m.group(7), i + 1, close - i + 1


bad = []
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    lines = path.read_text().splitlines()
    if len(lines) > MAX_FILE:
        bad.append(f"{path}: {len(lines)} lines (max {MAX_FILE})")
    if path.name == "tests.rs":
        continue
    for name, at, n in long_functions(lines):
        bad.append(f"{path}:{at}: fn {name} is {n} lines (max {MAX_FN})")
print("\n".join(bad) or f"sizes ok: files <= {MAX_FILE} lines, functions <= {MAX_FN}")
sys.exit(1 if bad else 0)
