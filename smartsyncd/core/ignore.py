"""Ignore rules: which paths of a copy never sync (pure; the scanner reads the file).

Built-in defaults cover what office software and operating systems leave beside working papers
(Office owner files ``~$*``, ``~*.tmp``, LibreOffice ``.~lock.*#``, ``Thumbs.db``,
``desktop.ini``, ``.DS_Store``, ``*.partial``); they match in any letter case, as the systems that
write them do not keep one. A ``.smartsyncignore`` at the copy's root adds rules in gitignore
syntax (pathspec), case-sensitive as in git; it is an ordinary file that syncs like any other, so
one colleague's rules reach every copy of the engagement.

An ignored path is outside the sync in both directions: never uploaded, never deleted on the
server when removed locally, never written or deleted locally by a pull (the planner drops it
from all three of its trees). A pattern that cannot be parsed is reported and left out; the
others still apply.

The server may also publish engagement-wide rules (same syntax and size limit), set by whoever
administers the engagement. ``check_engagement_rules`` refuses a bad one when it is set,
naming the line; ``EngagementRules`` is the server's own check of a commit's puts (a delete of
an ignored path stays allowed: a rule must never make a stored file undeletable).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import pathspec

from smartsyncd.core.errors import BadRequest

IGNORE_FILE = ".smartsyncignore"
DEFAULT_PATTERNS: tuple[str, ...] = (
    "~$*",
    "~*.tmp",
    ".~lock.*#",
    "Thumbs.db",
    "desktop.ini",
    ".DS_Store",
    "*.partial",
)
BUILT_IN = "built-in"  # the rule sets ``IgnoreRules.source`` names (IGNORE_FILE the third)
ENGAGEMENT = "engagement"
MAX_RULES_BYTES = 64 * 1024  # a larger .smartsyncignore is refused (reported), not parsed


@dataclass(frozen=True)
class IgnoreRules:
    """Compiled rules; ``problems`` lists ``(line number, why)`` for lines left out."""

    defaults: pathspec.PathSpec
    custom: pathspec.PathSpec
    problems: tuple[tuple[int, str], ...] = field(default=())
    engagement: pathspec.PathSpec | None = None  # the server-published rules, case-sensitive

    @classmethod
    def parse(cls, text: str | None = None, *, defaults: Iterable[str] = DEFAULT_PATTERNS
              ) -> IgnoreRules:
        """Rules from the built-in ``defaults`` and the text of a ``.smartsyncignore``."""
        problems: list[tuple[int, str]] = []
        good: list[str] = []
        for number, line in enumerate((text or "").splitlines(), start=1):
            try:
                pathspec.GitIgnoreSpec.from_lines([line])
            except (ValueError, re.error) as e:  # pathspec's errors, or its regex's
                problems.append((number, f"not a valid pattern: {e}"))
                continue
            good.append(line)
        lowered = [p.lower() for p in defaults]
        return cls(
            defaults=pathspec.GitIgnoreSpec.from_lines(lowered),
            custom=pathspec.GitIgnoreSpec.from_lines(good),
            problems=tuple(problems),
        )

    def ignores(self, path: str) -> bool:
        """True when the file at ``path`` (``/``-separated, relative to the copy) is ignored,
        by its own name or by a folder on its way."""
        return self.source(path) is not None

    def source(self, path: str) -> str | None:
        """Which rule set ignores ``path`` (a folder ends in ``/``): ``built-in``, the
        ``.smartsyncignore`` file or ``engagement`` (the first that matches), else None."""
        if self.defaults.match_file(path.lower()):
            return BUILT_IN
        if self.custom.match_file(path):
            return IGNORE_FILE
        if self.engagement is not None and self.engagement.match_file(path):
            return ENGAGEMENT
        return None

    def ignores_folder(self, path: str) -> bool:
        """True when everything under the folder ``path`` is ignored (the walk skips it)."""
        return self.source(path.rstrip("/") + "/") is not None

    def with_engagement(self, rules: EngagementRules | None) -> IgnoreRules:
        """These rules plus the engagement's published ones (unchanged when ``None``)."""
        return self if rules is None else replace(self, engagement=rules.spec)


NO_RULES = IgnoreRules.parse(defaults=())


def _bad_lines(text: str) -> list[tuple[int, str]]:
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except (ValueError, re.error) as e:
            problems.append((number, f"not a valid pattern: {e}"))
    return problems


def check_engagement_rules(text: str) -> str:
    """The engagement's rules as set (``text``), or raise ``BadRequest`` naming the first bad
    line; returns the text unchanged. Unlike a ``.smartsyncignore``, nothing is left out
    silently: the administrator sees the error at once."""
    if len(text.encode("utf-8")) > MAX_RULES_BYTES:
        raise BadRequest(f"ignore rules are limited to {MAX_RULES_BYTES} bytes")
    if "\x00" in text:
        raise BadRequest("ignore rules must not contain NUL characters")
    problems = _bad_lines(text)
    if problems:
        number, why = problems[0]
        raise BadRequest(f"ignore rules line {number}: {why}", line=number)
    return text


def rules_digest(text: str) -> str:
    """The version of a rule set: SHA-256 of its UTF-8 text (the clients' cheap check, and
    what the audit trail records)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rules_etag(digest: str | None) -> str:
    """The HTTP entity tag of a rule set (its digest quoted), ``"none"`` for no rules: what the
    server sends as ETag and a client names in If-None-Match."""
    return '"' + (digest or "none") + '"'


@dataclass(frozen=True)
class EngagementRules:
    """An engagement's published rules, compiled (already checked when they were set)."""

    text: str
    spec: pathspec.PathSpec
    digest: str

    @classmethod
    def parse(cls, text: str) -> EngagementRules:
        return cls(text, pathspec.GitIgnoreSpec.from_lines(text.splitlines()), rules_digest(text))

    def ignores(self, path: str) -> bool:
        """True when the engagement's rules ignore the file at ``path`` (case-sensitive)."""
        return self.spec.match_file(path)
