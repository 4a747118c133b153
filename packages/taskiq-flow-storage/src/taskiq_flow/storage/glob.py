r"""Redis glob matching, byte for byte the algorithm of Redis's ``stringmatchlen``.

Every backend filters ``keys(pattern)`` with these rules so that the answer is the same
everywhere, quirks included:

* ``*`` matches any run of bytes, ``?`` exactly one byte (a non-ASCII character is several
  bytes of UTF-8, as Redis sees it);
* ``[abc]``, ``[a-z]`` (a reversed range ``[z-a]`` is the same range), ``[^a]`` negates;
  inside brackets ``\\x`` is a literal ``x``;
* ``\\x`` outside brackets is a literal ``x``; a trailing lone ``\\`` is a literal ``\\``;
* an unterminated ``[`` takes the rest of the pattern as its set (``a[bc`` matches
  ``ab``); a lone ``[`` at the end matches nothing;
* ranges compare bytes as C ``char``, signed, as Redis built for x86-64 does. (Redis on
  ARM, where ``char`` is unsigned, differs only for ranges with a non-ASCII end.)

Keys are matched as their UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

__all__ = ["compile_glob", "escape_glob", "glob_match", "literal_prefix"]

_STAR = ord("*")
_QUESTION = ord("?")
_OPEN = ord("[")
_CLOSE = ord("]")
_CARET = ord("^")
_DASH = ord("-")
_BACKSLASH = ord("\\")
_SPECIAL = frozenset("*?[\\")


def _signed(byte: int) -> int:
    return byte - 256 if byte >= 128 else byte


def _match(  # noqa: PLR0911, PLR0912, PLR0915 - kept one function to mirror Redis
    pat: bytes, pi: int, s: bytes, si: int, give_up: list[bool]
) -> bool:
    # A direct port of stringmatchlen_impl(); give_up is its skipLongerMatches. Reading
    # past the end of the pattern yields 0, as C reads the sds NUL terminator there.
    pn = len(pat)
    sn = len(s)
    while pi < pn and si < sn:
        c = pat[pi]
        if c == _STAR:
            while pi + 1 < pn and pat[pi + 1] == _STAR:
                pi += 1
            if pn - pi == 1:
                return True
            while si < sn:
                if _match(pat, pi + 1, s, si, give_up):
                    return True
                if give_up[0]:
                    return False
                si += 1
            # The rest of the pattern matched nowhere in the rest of the string, so a
            # longer match of an earlier star cannot help either.
            give_up[0] = True
            return False
        if c == _QUESTION:
            si += 1
        elif c == _OPEN:
            pi += 1
            negate = pi < pn and pat[pi] == _CARET
            if negate:
                pi += 1
            matched = False
            sc = s[si]
            while True:
                pc = pat[pi] if pi < pn else 0
                if pc == _BACKSLASH and pn - pi >= 2:
                    pi += 1
                    if pat[pi] == sc:
                        matched = True
                elif pc == _CLOSE:
                    break
                elif pi >= pn:
                    pi -= 1
                    break
                elif pn - pi >= 3 and pat[pi + 1] == _DASH:
                    start = _signed(pat[pi])
                    end = _signed(pat[pi + 2])
                    if start > end:
                        start, end = end, start
                    pi += 2
                    if start <= _signed(sc) <= end:
                        matched = True
                elif pc == sc:
                    matched = True
                pi += 1
            if negate:
                matched = not matched
            if not matched:
                return False
            si += 1
        else:
            if c == _BACKSLASH and pn - pi >= 2:
                pi += 1
            if pat[pi] != s[si]:
                return False
            si += 1
        pi += 1
        if si == sn:
            while pi < pn and pat[pi] == _STAR:
                pi += 1
            break
    return pi >= pn and si == sn


def glob_match(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the Redis glob ``pattern`` (Redis's own algorithm)."""
    return _match(pattern.encode("utf-8"), 0, key.encode("utf-8"), 0, [False])


def escape_glob(text: str) -> str:
    r"""``text`` as a glob that matches exactly itself (``*?[]\`` each escaped by ``\``).

    For a key prefix in front of a user's pattern: ``escape_glob(prefix) + pattern``.
    """
    return "".join("\\" + ch if ch in _ESCAPED else ch for ch in text)


_ESCAPED = frozenset("*?[]\\")


def literal_prefix(pattern: str) -> str:
    """The literal text every key matching ``pattern`` starts with (may be empty)."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch in "*?[":
            break
        if ch == "\\":
            if i + 1 < n:
                out.append(pattern[i + 1])
                i += 2
                continue
            out.append(ch)
            break
        out.append(ch)
        i += 1
    return "".join(out)


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate for ``pattern`` over non-empty keys, with fast paths for common shapes.

    ``"*"``, a literal, and ``"literal*"`` skip the byte matcher; they agree with it for
    every non-empty key (the storage adapters never hold an empty key).
    """
    if not pattern:
        return _never
    stripped = pattern.rstrip("*")
    if not stripped:
        return _always
    if not _SPECIAL.intersection(stripped):
        if stripped == pattern:
            return pattern.__eq__
        return lambda key: key.startswith(stripped)
    pat = pattern.encode("utf-8")
    return lambda key: _match(pat, 0, key.encode("utf-8"), 0, [False])


def _always(key: str) -> bool:
    return True


def _never(key: str) -> bool:
    return False
