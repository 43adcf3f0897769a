from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.backup.catalog.chains import (
    BrokenChain,
    ChainRules,
    check_chain,
    end_time,
    find_gaps,
    latest_chain,
    pitr_chain,
    reachable_windows,
    start_time,
    time_continuity,
)
from include.backup.catalog.manifest import Manifest
from include.backup.errors import IntegrityError, RestoreRefused

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    return at(minutes).isoformat().replace("+00:00", "Z")


def mk(bid: str, btype: str, start: float, end: float, parent: str | None = None, **pos) -> Manifest:
    return Manifest(
        backup_id=bid,
        schedule="s",
        source="db",
        source_type="postgres",
        backup_type=btype,
        parent_id=parent,
        started_at=at(end),
        finished_at=at(end),
        payload_format="x",
        position={"start_time": iso(start), "end_time": iso(end), **pos},
    )


def ids(chain: list[Manifest]) -> list[str]:
    return [m.backup_id for m in chain]


@pytest.fixture
def two_chains() -> list[Manifest]:
    return [
        mk("f1", "FULL", 0, 0),
        mk("l1", "TRANSACTION_LOG", 0, 10, "f1"),
        mk("l2", "TRANSACTION_LOG", 10, 20, "l1"),
        mk("f2", "FULL", 25, 25),
        mk("l3", "TRANSACTION_LOG", 20, 30, "l2"),  # old chain continues past f2
        mk("l4", "TRANSACTION_LOG", 25, 40, "f2"),
    ]


def test_positions_and_fallbacks() -> None:
    m = mk("a", "FULL", 1, 2)
    assert start_time(m) == at(1) and end_time(m) == at(2)
    bare = m.model_copy(update={"position": {}})
    assert end_time(bare) == at(2) and start_time(bare) == at(2)


def test_pitr_picks_newest_full_and_stops_at_first_covering(two_chains) -> None:
    assert ids(pitr_chain(two_chains, at(5))) == ["f1", "l1"]
    assert ids(pitr_chain(two_chains, at(10))) == ["f1", "l1"]
    assert ids(pitr_chain(two_chains, at(15))) == ["f1", "l1", "l2"]
    assert ids(pitr_chain(two_chains, at(26))) == ["f2", "l4"]
    assert ids(pitr_chain(two_chains, at(25))) == ["f2"]
    assert ids(pitr_chain(two_chains, at(0))) == ["f1"]


def test_pitr_falls_back_to_older_full_chain() -> None:
    backups = [
        mk("f1", "FULL", 0, 0),
        mk("l1", "TRANSACTION_LOG", 0, 30, "f1"),
        mk("f2", "FULL", 20, 20),  # no logs yet
    ]
    assert ids(pitr_chain(backups, at(25))) == ["f1", "l1"]


def test_pitr_refuses_outside_window(two_chains) -> None:
    with pytest.raises(RestoreRefused) as exc:
        pitr_chain(two_chains, at(41))
    text = str(exc.value)
    assert "outside the reachable window" in text
    assert "2026-01-01T12:00:00Z – 2026-01-01T12:40:00Z" in text
    assert "source db" in text
    with pytest.raises(RestoreRefused):
        pitr_chain(two_chains, at(-1))
    with pytest.raises(RestoreRefused, match="no FULL"):
        pitr_chain([], at(1))


def test_pitr_naive_until_is_utc(two_chains) -> None:
    assert ids(pitr_chain(two_chains, at(5).replace(tzinfo=None))) == ["f1", "l1"]


def test_pitr_gap_is_integrity_error() -> None:
    backups = [
        mk("f1", "FULL", 0, 0),
        mk("l1", "TRANSACTION_LOG", 0, 10, "f1"),
        mk("l2", "TRANSACTION_LOG", 12, 20, "l1"),
    ]
    assert ids(pitr_chain(backups, at(5), time_continuity)) == ["f1", "l1"]
    with pytest.raises(IntegrityError) as exc:
        pitr_chain(backups, at(15), time_continuity)
    text = str(exc.value)
    assert "l1" in text and "l2" in text
    assert "2026-01-01T12:10:00Z" in text and "2026-01-01T12:12:00Z" in text


def test_reachable_windows_merge_and_split() -> None:
    backups = [
        mk("f1", "FULL", 0, 0),
        mk("l1", "TRANSACTION_LOG", 0, 10, "f1"),
        mk("f2", "FULL", 20, 20),
        mk("l2", "TRANSACTION_LOG", 20, 30, "f2"),
    ]
    assert reachable_windows(backups) == [(at(0), at(10)), (at(20), at(30))]
    with pytest.raises(RestoreRefused, match="12:10:00Z, 2026-01-01T12:20:00Z"):
        pitr_chain(backups, at(15))


def test_latest_chain(two_chains) -> None:
    assert ids(latest_chain(two_chains)) == ["f2", "l4"]
    assert ids(latest_chain(two_chains[:5])) == ["f1", "l1", "l2", "l3"]
    with pytest.raises(IntegrityError, match="needs parent l1"):
        latest_chain([two_chains[0], two_chains[2]])
    with pytest.raises(IntegrityError, match="names no parent"):
        latest_chain([mk("x", "TRANSACTION_LOG", 0, 1)])


def test_find_gaps() -> None:
    backups = [
        mk("f1", "FULL", 0, 0),
        mk("l1", "TRANSACTION_LOG", 0, 10, "f1"),
        mk("l2", "TRANSACTION_LOG", 12, 20, "l1"),
        mk("l3", "TRANSACTION_LOG", 30, 40, "gone"),
        mk("l4", "INCREMENTAL", 30, 40),
    ]
    problems = find_gaps(backups, time_continuity)
    assert len(problems) == 3
    assert any("gap between l1 and l2" in p for p in problems)
    assert any("needs parent gone" in p for p in problems)
    assert any("l4" in p and "no parent" in p for p in problems)
    assert len(find_gaps(backups)) == 2


def test_custom_continuity_called_along_chain(two_chains) -> None:
    calls = []

    def cont(prev: Manifest, cur: Manifest) -> str | None:
        calls.append((prev.backup_id, cur.backup_id))
        return None

    pitr_chain(two_chains, at(15), cont)
    assert calls == [("f1", "l1"), ("l1", "l2")]


# --- check_chain: the check every source's restore runs before it writes ----------------------

RULES = ChainRules(
    base_format="x",
    link_format="x",
    source_type="postgres",
    start_types=frozenset({"FULL", "SCHEMA"}),
    link_types=frozenset({"TRANSACTION_LOG"}),
)


def test_check_chain_accepts_a_linked_chain(two_chains) -> None:
    calls = []

    def cont(prev: Manifest, cur: Manifest) -> str | None:
        calls.append((prev.backup_id, cur.backup_id))
        return None

    check_chain(two_chains[:3], RULES, cont)
    assert calls == [("f1", "l1"), ("l1", "l2")]
    check_chain([mk("s", "SCHEMA", 0, 0)], RULES)


def test_check_chain_refuses_empty_and_wrong_formats(two_chains) -> None:
    with pytest.raises(RestoreRefused, match="the chain is empty"):
        check_chain([], RULES)
    with pytest.raises(RestoreRefused, match="empty: pass one"):
        check_chain([], ChainRules("x", "x", empty="empty: pass one"))
    other = two_chains[1].model_copy(update={"payload_format": "y"})
    with pytest.raises(RestoreRefused, match="l1 is a postgres backup in format 'y'"):
        check_chain([two_chains[0], other], RULES)
    worded = ChainRules("x", "x", wrong_format="{m.backup_id} bad", wrong_link_format="{m.backup_id} no log")
    with pytest.raises(RestoreRefused, match="l1 no log"):
        check_chain([two_chains[0], other], worded)
    mongo = two_chains[0].model_copy(update={"source_type": "mongo"})
    with pytest.raises(RestoreRefused, match="f1 is a mongo backup"):
        check_chain([mongo], RULES)


def test_check_chain_broken_is_one_type_for_every_condition(two_chains) -> None:
    f1, l1, l2 = two_chains[:3]
    cases = {
        "starts with l1, a TRANSACTION_LOG": [l1, l2],
        "l1 continues the SCHEMA backup s": [mk("s", "SCHEMA", 0, 0), l1],
        r"f2 \(FULL\) cannot follow f1": [f1, two_chains[3]],
        "l2 names parent l1, not f1": [f1, l2],
        "l1 is from 'other'": [f1, l1.model_copy(update={"source": "other"})],
    }
    for message, chain in cases.items():
        with pytest.raises(BrokenChain, match=message) as exc:
            check_chain(chain, RULES)
        # the one type is both what a restore refusal and a broken chain were raised as
        assert isinstance(exc.value, IntegrityError) and isinstance(exc.value, RestoreRefused)


def test_check_chain_gap_uses_the_sources_wording() -> None:
    chain = [mk("f1", "FULL", 0, 0), mk("l1", "TRANSACTION_LOG", 2, 10, "f1")]
    with pytest.raises(BrokenChain, match="broken between f1 and l1: changes between"):
        check_chain(chain, RULES, time_continuity)
    worded = ChainRules("x", "x", gap="{cur.backup_id} after {prev_end}: {problem}")
    with pytest.raises(BrokenChain, match="l1 after 2026-01-01T12:00:00Z: changes"):
        check_chain(chain, worded, time_continuity)
    check_chain(chain, RULES)  # no continuity: links only
