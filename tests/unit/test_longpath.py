"""Windows extended-length paths (client/longpath.py), checked with ``ntpath`` semantics on any OS."""

from __future__ import annotations

import ntpath

import pytest

from smartsyncd.client.longpath import extended_length

LONG = "\\".join(["Engagement folder number " + str(n) for n in range(12)])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("C:\\Clients\\Acme\\ledger.xlsx", "\\\\?\\C:\\Clients\\Acme\\ledger.xlsx"),
        ("c:/Clients/Acme/ledger.xlsx", "\\\\?\\c:\\Clients\\Acme\\ledger.xlsx"),
        ("C:\\", "\\\\?\\C:\\"),
        ("C:\\Clients\\Old\\..\\Acme\\.\\ledger.xlsx", "\\\\?\\C:\\Clients\\Acme\\ledger.xlsx"),
        ("C:\\a\\..\\..\\b", "\\\\?\\C:\\b"),
        ("\\\\fileserver\\clients\\Acme\\ledger.xlsx",
         "\\\\?\\UNC\\fileserver\\clients\\Acme\\ledger.xlsx"),
        ("//fileserver/clients/Acme/../Beta/x.pdf", "\\\\?\\UNC\\fileserver\\clients\\Beta\\x.pdf"),
        ("C:\\" + LONG + "\\f.xlsx", "\\\\?\\C:\\" + LONG + "\\f.xlsx"),
    ],
)
def test_absolute_paths_get_the_extended_prefix_after_normalising(given: str, expected: str) -> None:
    assert extended_length(given) == expected


@pytest.mark.parametrize(
    "already",
    ["\\\\?\\C:\\Clients\\a.xlsx", "\\\\?\\UNC\\server\\share\\a", "\\\\.\\PhysicalDrive0"],
)
def test_already_prefixed_paths_are_left_alone(already: str) -> None:
    assert extended_length(already) == already


@pytest.mark.parametrize("relative", ["ledger.xlsx", "Clients\\a.xlsx", "..\\a", "\\Clients\\a",
                                      "C:Clients\\a", "", "\\\\server"])
def test_relative_and_drive_relative_paths_are_refused(relative: str) -> None:
    with pytest.raises(ValueError, match="not an absolute Windows path"):
        extended_length(relative)


def test_long_path_stays_over_the_limit_and_keeps_every_component() -> None:
    path = "C:\\" + LONG + "\\f.xlsx"
    assert len(path) > 260
    assert extended_length(path).split("\\")[4:] == path.split("\\")[1:]


@pytest.mark.parametrize("prefixed", ["\\\\?\\C:\\" + LONG + "\\f.xlsx", "\\\\?\\UNC\\server\\share\\a"])
def test_a_prefixed_path_survives_the_abspath_native_path_applies_first(prefixed: str) -> None:
    """``osfs.native_path`` runs ``abspath`` before the prefix; entry paths of a prefixed
    ``osfs.scandir`` come back through it (wipe, stale temp removal) and stay as they are."""
    assert extended_length(ntpath.abspath(prefixed)) == prefixed
