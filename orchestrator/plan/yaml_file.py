"""Reading YAML for the plan: the experiments file and `--set` values, through one safe loader.

Both readers share the loader so that a value given on the command line is read exactly as
the same text in experiments.yaml would be; it is a yaml.SafeLoader that also refuses absurd
nesting. Plain Python (pyyaml imported where used, to keep `onorm --help` fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.errors import UserError

# YAML deeper than this is no experiments file (and 20,000 nested `[` overflow the parser).
MAX_YAML_NESTING = 50


def read_yaml(path: Path) -> Any:
    """The file's YAML document through the safe loader; one UserError for a file that is
    missing, unreadable, not UTF-8, not YAML, or nested deeper than MAX_YAML_NESTING."""
    import yaml

    shown = str(path)
    if path.is_dir():
        raise UserError(f"experiments file {shown!r} is a folder: pass --config FILE")
    if not path.is_file():
        raise UserError(f"experiments file {shown!r} not found: pass --config FILE")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"experiments file {shown!r} cannot be read ({err.strerror}): check its "
                        "permissions, or pass another --config FILE") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"experiments file {shown!r} is not UTF-8 text (byte "
                        f"0x{data[err.start]:02x} at line {line}): save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=depth_limited_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"experiments file {shown!r} is not valid YAML{at}: {problem}") from None
    except ValueError as err:   # an integer literal beyond Python's 4300 digits
        raise UserError(f"experiments file {shown!r} holds a value that cannot be read "
                        f"({str(err).split(':')[0][:80]}): no setting takes a number that "
                        "long; correct it") from None


def depth_limited_loader():
    """yaml.SafeLoader that refuses nesting deeper than MAX_YAML_NESTING (deep nesting would
    end in a RecursionError thousands of lines long)."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > MAX_YAML_NESTING:
                    raise yaml.composer.ComposerError(
                        None, None, f"nested more than {MAX_YAML_NESTING} levels deep",
                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader
