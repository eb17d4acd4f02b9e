"""Reading a params file: the YAML mapping `load_params` validates, or one ConfigError line naming the file.

YAML lets a mapping repeat a key and keeps the last value, so `per_class: 2` then `per_class: 3000` would
run 3000 silently, and a second `hardware:` section would replace the first: every repeated key, at any
depth, is an error naming its key path and line. A file with no sections at all (empty, or only comments)
is an error too, rather than a silent full run of every default; `{}` still says "all defaults" on purpose.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from diffusion.config.base import ConfigError


class DuplicateKey(ValueError):
    """A mapping repeats a key: `key` is the dotted path, `line` and `first` the 1-based lines."""

    def __init__(self, key: str, line: int, first: int):
        super().__init__(f"{key}: duplicate key on line {line} (first on line {first}); keep one")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose mappings refuse a repeated key (DuplicateKey), at any depth.

    The check walks the composed document before it is constructed, so it knows each key's path; merge keys
    (`<<: *base`) are left to SafeLoader, whose explicit keys may override merged ones as YAML intends."""

    def construct_document(self, node: yaml.Node) -> object:
        self._check_unique(node, (), set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
        """Raise DuplicateKey for the first repeated key under `node` (`seen`: nodes visited, for aliases)."""
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, (*path, str(i)), seen)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[object, int] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise DuplicateKey(".".join((*path, str(key))), line, lines[key])
                lines[key] = line
                self._check_unique(value_node, (*path, str(key)), seen)

    def _key(self, key_node: yaml.Node) -> object:
        """A scalar key as YAML reads it (so `1` and `01` are one key); a merge key (`<<`) or a rare
        non-scalar key (a mapping or a list as key) as a fresh object, equal to no other."""
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            return object()
        return self.construct_object(key_node)


def read_params_file(path: Path) -> object:
    """The parsed YAML of a params file; ConfigError (one line naming the file) if it is missing, a folder,
    unreadable, not valid YAML, repeats a key, or holds no sections."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a params file; give the params YAML file itself")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the params file ({err})") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is None:
        raise ConfigError(
            f"{path}: the params file holds no sections (it is empty or only comments); give the sections"
            " to set, or {} for every default"
        )
    return raw
