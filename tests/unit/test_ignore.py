"""Ignore rules (core/ignore.py) and the planner's promise about them: an ignored path never
uploads, never deletes anything on either side and is never written by a pull."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from smartsyncd.core.ignore import NO_RULES, EngagementRules, IgnoreRules
from smartsyncd.core.model import Change
from smartsyncd.core.planner import BaseEntry, LocalEntry, plan

T = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def cid(n: int) -> str:
    return f"{n:064x}"


def test_defaults_cover_office_and_system_leftovers_in_any_case() -> None:
    rules = IgnoreRules.parse()
    for path in ("~$Budget.xlsx", "Q1/~$Memo.docx", "~WRL0001.tmp", ".~lock.Leads.ods#",
                 "Thumbs.db", "scans/THUMBS.DB", "desktop.ini", "Desktop.INI", ".DS_Store",
                 "big.iso.partial"):
        assert rules.ignores(path), path
    for path in ("Budget.xlsx", "Q1/Memo.docx", "notes.tmp", "Thumbs.db.xlsx", ".smartsyncignore"):
        assert not rules.ignores(path), path


def test_custom_rules_use_gitignore_syntax_and_negation() -> None:
    rules = IgnoreRules.parse("# drafts\nbuild/\n*.bak\n!keep.bak\n/top-only.txt\n")
    assert rules.problems == ()
    assert rules.ignores("build/out.xlsx") and rules.ignores("a/build/out.xlsx")
    assert rules.ignores_folder("a/build") and not rules.ignores_folder("a/builds")
    assert not rules.ignores("build")  # "build/" names folders only
    assert rules.ignores("x.bak") and not rules.ignores("keep.bak")
    assert rules.ignores("top-only.txt") and not rules.ignores("sub/top-only.txt")
    assert not rules.ignores("X.BAK")  # custom rules are case-sensitive, as in git


def test_a_bad_line_is_reported_and_the_others_still_apply() -> None:
    rules = IgnoreRules.parse("*.bak\n[z-a]\n*.log\n")
    assert [n for n, _ in rules.problems] == [2]
    assert rules.ignores("a.bak") and rules.ignores("b.log")


def test_no_rules_ignore_nothing() -> None:
    assert not NO_RULES.ignores("~$Budget.xlsx")


def test_planner_leaves_ignored_paths_out_of_every_direction() -> None:
    rules = IgnoreRules.parse("scratch/\n")
    base = {"scratch/gone.xlsx": BaseEntry(3, cid(1), 1), "Thumbs.db": BaseEntry(4, cid(2), 1),
            "kept.xlsx": BaseEntry(5, cid(3), 1)}
    local = {"~$kept.xlsx": LocalEntry(cid(7), 1), "scratch/new.xlsx": LocalEntry(cid(8), 1),
             "kept.xlsx": LocalEntry(cid(3), 1), "Thumbs.db": LocalEntry(cid(9), 1)}
    remote = [Change(6, "scratch/remote.xlsx", "put", cid(4), 1, None, "bob", None, T),
              Change(7, "Thumbs.db", "delete", None, 0, 4, "bob", None, T)]
    p = plan(local, base, remote, ignored=rules.ignores)
    assert p.push_empty and p.pull_empty  # nothing moves: every change here is ignored
    assert p.ignored == ["Thumbs.db", "scratch/new.xlsx", "~$kept.xlsx"]
    without = plan(local, base, remote)  # the same trees with no rules do move things
    assert not without.push_empty and not without.pull_empty


paths = st.sampled_from(["a.xlsx", "~$a.xlsx", "tmp/b.docx", "b.docx", "Thumbs.db"])
contents = st.integers(min_value=1, max_value=4).map(cid)


@settings(max_examples=300, deadline=None)
@given(
    local=st.dictionaries(paths, contents.map(lambda c: LocalEntry(c, 1))),
    base=st.dictionaries(paths, st.tuples(st.integers(1, 5), contents)),
    remote=st.lists(st.tuples(paths, st.booleans(), contents), max_size=6),
    complete=st.booleans(),
)
def test_no_plan_ever_touches_an_ignored_path(local, base, remote, complete) -> None:
    rules = IgnoreRules.parse("tmp/\n")
    base_rows = {p: BaseEntry(seq, c, 1) for p, (seq, c) in base.items()}
    changes = [
        Change(10 + i, p, "put" if is_put else "delete", c if is_put else None, 1, None, "bob",
               None, T)
        for i, (p, is_put, c) in enumerate(remote)
    ]
    p = plan(local, base_rows, changes, complete=complete, ignored=rules.ignores)
    touched = (
        [x.path for x in p.push_puts] + [x.path for x in p.push_deletes]
        + [x.path for x in p.pull_writes] + [x.path for x in p.pull_deletes]
        + [x.path for x in p.conflicts] + [x.path for x in p.adopt] + p.forget
        + [r.old for r in p.renames] + [r.new for r in p.renames]
    )
    assert not [t for t in touched if rules.ignores(t)]


def test_source_names_the_rule_set_that_ignores_a_path() -> None:
    rules = IgnoreRules.parse("drafts/\n*.tmp\n").with_engagement(EngagementRules.parse("*.bak\n*.tmp\n"))
    assert rules.source("Thumbs.db") == "built-in"
    assert rules.source("notes.tmp") == ".smartsyncignore"  # the first set that matches
    assert rules.source("drafts/") == ".smartsyncignore"
    assert rules.source("old.bak") == "engagement"
    assert rules.source("Ledger.xlsx") is None
    assert rules.ignores("old.bak") and rules.ignores_folder("drafts") and not rules.ignores("a.txt")
