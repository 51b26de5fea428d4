"""Line numbers of keys in TOML source.

tomllib reports positions only for syntax errors; semantic errors (a bad size, an unknown key) need the
line of the key they are about. This scanner walks text that tomllib has already accepted and records the
line of every table header and key, with arrays of tables numbered (``("rule", 0, "limits", "memory_max")``).
Keys inside arrays of values are not recorded: an error there points at the array's key.
"""

from __future__ import annotations

import bisect
import re

KeyPath = tuple[str | int, ...]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED_CHAR = re.compile(r"\\.", re.DOTALL)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self.lines: dict[KeyPath, int] = {}
        self._array_lengths: dict[KeyPath, int] = {}

    def line(self) -> int:
        return bisect.bisect_left(self._newlines, self.pos) + 1

    def peek(self, length: int = 1) -> str:
        return self.text[self.pos : self.pos + length]

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces and tabs; with newlines=True also line breaks and comments."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif newlines and char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def read_string(self) -> str:
        """A basic or literal string, single- or multi-line, starting at pos; returns its raw content."""
        for quote in ('"""', "'''", '"', "'"):
            if self.text.startswith(quote, self.pos):
                break
        start = self.pos + len(quote)
        index = start
        while True:
            if quote[0] == '"' and self.text[index] == "\\":
                index += 2
                continue
            if self.text.startswith(quote, index):
                break
            index += 1
        # A multi-line string may end with up to two extra quote characters before its delimiter.
        while len(quote) == 3 and self.text.startswith(quote[0], index + len(quote)):
            index += 1
        self.pos = index + len(quote)
        return self.text[start:index]

    def read_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            if self.peek() in ('"', "'"):
                quoted = self.peek() == '"'
                raw = self.read_string()
                parts.append(_ESCAPED_CHAR.sub(lambda m: m.group(0)[1], raw) if quoted else raw)
            else:
                match = _BARE_KEY_RE.match(self.text, self.pos)
                if match is None:
                    return parts
                parts.append(match.group(0))
                self.pos = match.end()
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def record(self, path: KeyPath, line: int) -> None:
        for length in range(1, len(path) + 1):
            self.lines.setdefault(path[:length], line)

    def skip_value(self, path: KeyPath | None) -> None:
        """Skip one value; record the keys of inline tables under path (None: inside an array, not recorded)."""
        char = self.peek()
        if char == "{":
            self.pos += 1
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "}":
                    self.pos += 1
                    return
                line = self.line()
                key = tuple(self.read_key())
                if path is not None:
                    self.record(path + key, line)
                self.skip_blank(newlines=False)
                self.pos += 1  # "="
                self.skip_blank(newlines=False)
                self.skip_value(None if path is None else path + key)
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif char == "[":
            self.pos += 1
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                self.skip_value(None)
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif char in ('"', "'"):
            self.read_string()
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def resolve_header(self, parts: list[str], array: bool) -> KeyPath:
        """Number arrays of tables: [rule.match] after the second [[rule]] is ("rule", 1, "match")."""
        resolved: list[str | int] = []
        for index, part in enumerate(parts):
            resolved.append(part)
            prefix = tuple(resolved)
            last = index == len(parts) - 1
            if array and last:
                count = self._array_lengths.get(prefix, 0)
                self._array_lengths[prefix] = count + 1
                resolved.append(count)
            elif prefix in self._array_lengths:
                resolved.append(self._array_lengths[prefix] - 1)
        return tuple(resolved)

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            line = self.line()
            if self.peek() == "[":
                array = self.peek(2) == "[["
                self.pos += 2 if array else 1
                table = self.resolve_header(self.read_key(), array)
                self.record(table, line)
                self.pos = self.text.find("]", self.pos) + (2 if array else 1)
            else:
                key = table + tuple(self.read_key())
                self.record(key, line)
                self.skip_blank(newlines=False)
                self.pos += 1  # "="
                self.skip_blank(newlines=False)
                self.skip_value(key)


class KeyLines:
    """Where each key of a (tomllib-valid) TOML text is; falls back to the nearest enclosing key or table."""

    def __init__(self, text: str) -> None:
        self._lines = _Scanner(text).scan()

    def line_of(self, path: KeyPath) -> int:
        for length in range(len(path), 0, -1):
            line = self._lines.get(path[:length])
            if line is not None:
                return line
        return 1


def format_path(path: KeyPath) -> str:
    """("rule", 0, "limits", "memory_max") -> "rule[1].limits.memory_max" (arrays of tables count from 1)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            text += f".{part}" if text else part
    return text
