"""The test suite's own scheduling: under pytest-xdist (`make test` runs `-n 2 --dist
loadgroup`), tests that share an expensive fixture must land on one worker."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import shared_fixture_groups


def item(nodeid: str, **fixtures: tuple[str, str]):
    """A stand-in for a collected test: `fixtures` maps a fixture's name to (scope, baseid)."""
    defs = {name: [SimpleNamespace(scope=scope, baseid=baseid)]
            for name, (scope, baseid) in fixtures.items()}
    return SimpleNamespace(nodeid=nodeid, _fixtureinfo=SimpleNamespace(name2fixturedefs=defs))


def test_tests_sharing_an_expensive_fixture_share_a_group_and_others_stay_apart():
    book = ("module", "tests/test_book.py")
    runs = ("session", "tests")
    items = [
        item("tests/test_book.py::test_a", smoke_env=book, tmp_path_factory=("session", "")),
        item("tests/test_book.py::test_b", smoke_env=book),
        item("tests/test_book.py::test_c", smoke_env=book, smoke_runs=runs),
        item("tests/test_training.py::test_d", smoke_runs=runs),  # joined through test_c
        item("tests/test_book.py::test_e", built_book=("module", "tests/test_book.py")),
        item("tests/test_x.py::test_f", tmp_path=("function", ""), tmp_path_factory=("session", "")),
        item("tests/test_x.py::test_g"),
        item("tests/test_y.py::test_h", wrapper=("module", "tests/test_y.py")),
        item("tests/test_z.py::test_i", wrapper=("module", "tests/test_z.py")),  # another module's
    ]
    groups = shared_fixture_groups(items)
    by_test = {nodeid.split("::")[1]: group for nodeid, group in groups.items()}
    assert by_test["test_a"] == by_test["test_b"] == by_test["test_c"] == by_test["test_d"]
    others = [by_test[t] for t in ("test_a", "test_e", "test_f", "test_g", "test_h", "test_i")]
    assert len(set(others)) == len(others)
