#!/usr/bin/env python3
"""Checks the shape of src/: the include rules between folders, and function length.

  check_layout.py SRC_DIR [--max-function-lines N [--scope FOLDER]]

Include rules (README "Layout"): every folder of src/ sits on a floor, and a file includes
only its own folder and folders on lower floors:

  0 common
  1 torchfile                                 (torch.save's format: pickle walker, dtypes)
  2 io
  3 stats, data, model, checkpoint, comm      (model -> stats allowed: the observe op feeds
                                               the StatsAccumulator)
  4 config                                    (fills the plain option structs of floor 3)
  5 report
  6 app
  7 main.cpp

Function length: the body of every function defined in a .cpp file (from the line of its
opening brace to its closing one), lambdas counted within their function. Prints the five
longest; with --max-function-lines, a longer one (in --scope's folder only, if given) fails
the check.
Exit status 0 when everything holds, 1 otherwise.
"""
import argparse
import os
import re
import sys

FLOORS = {"common": 0, "torchfile": 1, "io": 2, "stats": 3, "data": 3, "model": 3,
          "checkpoint": 3, "comm": 3, "config": 4, "report": 5, "app": 6, "main.cpp": 7}
ALLOWED_SIDEWAYS = {("model", "stats")}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/')


def folder_of(src, path):
    rel = os.path.relpath(path, src).split(os.sep)
    return rel[0] if len(rel) > 1 else rel[0]


def check_includes(src):
    problems = []
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith((".h", ".cpp")):
                continue
            path = os.path.join(root, name)
            me = folder_of(src, path)
            if me not in FLOORS:
                problems.append(f"{os.path.relpath(path, src)}: folder '{me}' has no floor in "
                                "check_layout.py (add it there and to the README)")
                continue
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m or m.group(1) == me:
                        continue
                    other = m.group(1)
                    if other not in FLOORS:
                        problems.append(f"{os.path.relpath(path, src)}:{n}: includes unknown folder '{other}'")
                    elif FLOORS[other] > FLOORS[me] or (
                            FLOORS[other] == FLOORS[me] and (me, other) not in ALLOWED_SIDEWAYS):
                        problems.append(f"{os.path.relpath(path, src)}:{n}: {me} (floor {FLOORS[me]}) "
                                        f"includes {other} (floor {FLOORS[other]})")
    return problems


def strip_code(text):
    """The text with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


HEADER_END = re.compile(r"\)\s*(const\s*)?(noexcept\s*)?(override\s*)?(->\s*[\w:<>,\s*&]+)?$")
NAME = re.compile(r"([~\w:]+)\s*\([^()]*(\([^()]*\)[^()]*)*\)\s*(const\s*)?(noexcept\s*)?(override\s*)?(->\s*[\w:<>,\s*&]+)?$")


def functions(path):
    """[(lines, name, first line)] of the functions defined at namespace or class scope."""
    text = strip_code(open(path, encoding="utf-8").read())
    found = []
    stack = []  # (kind, start offset, start line, name)
    line = 1
    prev = 0
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        elif c == "{":
            head = text[prev:i].rstrip()
            in_function = any(k == "fn" for k, *_ in stack)
            if not in_function and HEADER_END.search(head) and not re.search(
                    r"\b(namespace|class|struct|enum|union)\b[^;{}()]*$", head):
                m = NAME.search(head)
                stack.append(("fn", i, line, m.group(1) if m else "?"))
            else:
                stack.append(("block", i, line, ""))
            prev = i + 1
        elif c == "}":
            if stack:
                kind, _, start, name = stack.pop()
                if kind == "fn":
                    found.append((line - start + 1, name, start))
            prev = i + 1
        elif c == ";":
            prev = i + 1
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("--max-function-lines", type=int, default=None)
    ap.add_argument("--scope", default="", help="apply the length limit to this folder only")
    a = ap.parse_args()
    problems = check_includes(a.src)
    print(f"include rules: {len(problems)} violation(s)")
    allf = []
    for root, _, files in os.walk(a.src):
        for name in files:
            if name.endswith(".cpp"):
                p = os.path.join(root, name)
                allf += [(n, f"{os.path.relpath(p, a.src)}:{s} {fn}") for n, fn, s in functions(p)]
    allf.sort(reverse=True)
    print(f"longest of {len(allf)} functions in src/:")
    for n, where in allf[:5]:
        print(f"  {n:4d} lines  {where}")
    if a.max_function_lines is not None:
        for n, where in allf:
            if n > a.max_function_lines and where.startswith(a.scope):
                problems.append(f"{where}: {n} lines > {a.max_function_lines}")
    for p in problems:
        print(f"FAIL {p}")
    print(f"{0 if problems else 1} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
