"""Prints the shell commands of one README block, so that CI runs exactly what the README says.

A block is the fenced ``bash`` code block that follows a marker line
``<!-- ci: NAME -->`` in README.md. Usage: ``python .ci/readme_commands.py NAME``.
"""
import pathlib
import re
import sys


def block(readme: str, name: str) -> str:
  match = re.search(r"<!-- ci: %s -->\s*```bash\n(.*?)```" % re.escape(name), readme, re.S)
  if not match:
    sys.exit(f"README.md has no ```bash block after <!-- ci: {name} -->")
  return match.group(1).strip()


if __name__ == "__main__":
  readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
  print(block(readme, sys.argv[1]))
