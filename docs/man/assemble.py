#!/usr/bin/env python3
"""Assembles a man page's Markdown for go-md2man from a frame in docs/man/ and docs/cli.md.

docs/cli.md is the one source of truth for the commands and options; a frame (blksnap.8.md,
blksnapd.8.md) adds only what a man page has and cli.md does not (NAME, SYNOPSIS, FILES,
SEE ALSO) and pulls sections of cli.md in with a line

    <!-- include ../cli.md "## blksnap" -->

(the body of that heading, up to the next heading of the same or a higher level, with its
sub-headings raised one level). On the way, for go-md2man:
  * pipe tables become definition lists (first column the term, the others "header: value"),
    since go-md2man's tbl output is far wider than a terminal;
  * links to other Markdown files keep only their text; HTML comments go;
  * @VERSION@ becomes the version given on the command line.

usage: assemble.py FRAME OUTPUT VERSION
"""
import os
import re
import sys

INCLUDE = re.compile(r'^<!--\s*include\s+(\S+)\s+"(#+) (.*)"\s*-->\s*$')
LOCAL_LINK = re.compile(r'\[([^\]]+)\]\((?!https?:)[^)]*\)')
COMMENT = re.compile(r"<!--.*?-->\n?", re.S)
PLAIN_HEADERS = {"does", "meaning"}  # columns printed without their header


def section(lines, level, title):
    """The lines under heading `level title`, sub-headings raised one level; fences respected."""
    out, inside, fence = [], False, False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#+) (.*)$", line)
        if m and inside and len(m.group(1)) <= len(level):
            break
        if m and not inside and m.group(1) == level and m.group(2).strip() == title:
            inside = True
            continue
        if inside:
            out.append(line[1:] if m else line)
    if not inside:
        sys.exit(f"assemble.py: no section '{level} {title}'")
    return out


def cells(row):
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|"):
        row = row[:-1]
    # A `|` inside backticks is not a separator.
    parts, cur, code = [], "", False
    for ch in row:
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def tables_to_definitions(lines):
    out, i, fence = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fence = not fence
        is_table = (not fence and line.lstrip().startswith("|") and i + 1 < len(lines)
                    and re.match(r"^\s*\|?\s*:?-{3,}", lines[i + 1]))
        if not is_table:
            out.append(line)
            i += 1
            continue
        headers = cells(line)
        i += 2
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            row = cells(lines[i])
            i += 1
            term, plain, labelled = row[0], [], []
            for header, value in zip(headers[1:], row[1:]):
                if not value:
                    continue
                if header.lower() in PLAIN_HEADERS:
                    plain.append(value)
                else:
                    labelled.append(f"*{header}:* {value}")
            text = ""
            for part in plain + labelled:
                text += ("" if not text else " " if text.endswith(".") else "; ") + part
            out.append(term)
            out.append(": " + text)
            out.append("")
    return out


def main():
    frame, output, version = sys.argv[1:4]
    base = os.path.dirname(os.path.abspath(frame))
    result = []
    with open(frame, encoding="utf-8") as f:
        for line in f.read().splitlines():
            m = INCLUDE.match(line)
            if not m:
                result.append(line.replace("@VERSION@", version))
                continue
            with open(os.path.join(base, m.group(1)), encoding="utf-8") as src:
                result.extend(section(src.read().splitlines(), m.group(2), m.group(3)))
    text = "\n".join(tables_to_definitions(result)) + "\n"
    text = COMMENT.sub("", text)  # go-md2man warns on HTML blocks
    text = LOCAL_LINK.sub(r"\1", text)
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
