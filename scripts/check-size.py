#!/usr/bin/env python3
"""`make lint`: no file under src/ over 600 lines, no function outside tests
over 70 (rustfmt layout: a body closes at its `fn`'s indentation).

Test code is what `#[cfg(test)]` marks: the item right after it (a
`mod tests { ... }` block, or a single fn) is skipped, wherever it stands
in the file; everything before and after it is checked. Files named
tests.rs (or *_tests.rs) hold tests only."""
import pathlib
import re
import sys

MAX_FILE, MAX_FN = 600, 70
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
ITEM = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(mod|fn|async fn|impl|struct|enum|const|static|use)\b")


def block_end(lines, start):
    """The line closing the item that starts at `start` (its first line
    ending in `{` or `;`, then a `}` at the item's indentation)."""
    indent = re.match(r"^(\s*)", lines[start]).group(1)
    end = next((j for j in range(start, len(lines)) if lines[j].rstrip().endswith((";", "{"))), start)
    if lines[end].rstrip().endswith(";"):
        return end
    return next((j for j in range(end + 1, len(lines)) if lines[j].rstrip() == indent + "}"), len(lines) - 1)


def test_lines(lines):
    """Indexes of lines that belong to `#[cfg(test)]` items."""
    skip = set()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith(("#[", "///", "//")):
                j += 1
            if j < len(lines) and ITEM.match(lines[j]):
                end = block_end(lines, j)
                skip.update(range(i, end + 1))
                i = end + 1
                continue
        i += 1
    return skip


def long_functions(lines):
    skip = test_lines(lines)
    for i, line in enumerate(lines):
        if i in skip:
            continue
        m = FN.match(line)
        if not m:
            continue
        end = block_end(lines, i)
        if lines[end].rstrip().endswith(";"):
            continue  # a declaration without a body
        if end - i + 1 > MAX_FN:
            yield m.group(7), i + 1, end - i + 1


def main():
    bad = []
    for path in sorted(pathlib.Path("src").rglob("*.rs")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE:
            bad.append(f"{path}: {len(lines)} lines (max {MAX_FILE})")
        if path.name == "tests.rs" or path.name.endswith("_tests.rs"):
            continue
        for name, at, n in long_functions(lines):
            bad.append(f"{path}:{at}: fn {name} is {n} lines (max {MAX_FN})")
    print("\n".join(bad) or f"sizes ok: files <= {MAX_FILE} lines, functions <= {MAX_FN}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
