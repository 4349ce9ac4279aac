"""Refuse modules over 500 lines and functions over 80 (run by .ci/run; ruff cannot count function lines).

Usage: python tools/check_sizes.py [PATH ...]   (default: the sctconv package)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # from the ``def`` line to the last line of the body, docstring included


def oversized(path: Path) -> list[str]:
    """One line per module or function of ``path`` over its limit."""
    text = path.read_text(encoding="utf-8")
    problems = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        problems.append(f"{path}: {lines} lines (at most {MAX_MODULE_LINES} per module)")
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{path}:{node.lineno}: {node.name} has {length} lines "
                                f"(at most {MAX_FUNCTION_LINES} per function)")
    return problems


def main(argv: list[str]) -> int:
    """Check every .py file under the given paths; 1 when any is over a limit."""
    roots = [Path(a) for a in argv] or [Path(__file__).resolve().parent.parent / "sctconv"]
    files = sorted(p for root in roots for p in ([root] if root.is_file() else root.rglob("*.py")))
    problems = [problem for path in files for problem in oversized(path)]
    print("\n".join(problems) or f"sizes: {len(files)} files within {MAX_MODULE_LINES} lines per module "
          f"and {MAX_FUNCTION_LINES} per function")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
