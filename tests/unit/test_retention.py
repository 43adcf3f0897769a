"""Retention: explicit cases from the source guide, properties over generated histories,
and apply_retention against a local-disk target."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.backup.catalog.catalog import list_backups, write_manifest
from include.backup.catalog.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    Manifest,
    StoredObject,
    Verification,
    backup_prefix,
)
from include.backup.config.schema import BackupConfig, GFSRetention
from include.backup.errors import TargetError
from include.backup.retention import (
    DEPENDENT_TYPES,
    TIERS,
    RetentionPlan,
    Swept,
    apply_retention,
    bucket,
    chain_base,
    plan_retention,
    sweep_target,
)
from include.backup.schedule_retention import MONITOR_SWEEP_EVERY, sweep_all_targets
from include.backup.targets.base import ObjectInfo, PartialUpload, temp_name
from include.backup.targets.local import LocalTarget

SEED_GFS = GFSRetention(daily=7, weekly=4, monthly=12, yearly=7)


def make(
    backup_id: str,
    started: datetime,
    backup_type: str = "FULL",
    parent_id: str | None = None,
    *,
    verified: bool = True,
    schedule: str = "daily_full",
    source: str = "events_pg",
) -> Manifest:
    return Manifest(
        backup_id=backup_id,
        schedule=schedule,
        source=source,
        source_type="postgres",
        backup_type=backup_type,
        parent_id=parent_id,
        started_at=started,
        payload_format="tar",
        verification={"local": Verification(ok=verified, verified_at=started)} if verified else {},
    )


def daily_fulls(first: date, last: date, hour: int = 2) -> list[Manifest]:
    out = []
    day = first
    while day <= last:
        out.append(make(f"full-{day.isoformat()}", datetime(day.year, day.month, day.day, hour, tzinfo=UTC)))
        day += timedelta(days=1)
    return out


def kept_days(plan: RetentionPlan) -> set[str]:
    return {backup_id.removeprefix("full-") for backup_id in plan.keep}


# --- explicit cases --------------------------------------------------------------------


def test_seed_policy_over_eight_years_of_daily_backups() -> None:
    backups = daily_fulls(date(2016, 1, 1), date(2023, 12, 31))
    plan = plan_retention(backups, gfs=SEED_GFS, retention_days=None, now=datetime(2024, 1, 1, tzinfo=UTC))

    daily = {f"2023-12-{d}" for d in range(25, 32)}
    weekly = {"2023-12-31", "2023-12-24", "2023-12-17", "2023-12-10"}  # Sundays end ISO weeks
    month_ends = {
        (date(2023, m + 1, 1) - timedelta(days=1)).isoformat() if m < 12 else "2023-12-31"
        for m in range(1, 13)
    }
    yearly = {f"{y}-12-31" for y in range(2017, 2024)}
    assert kept_days(plan) == daily | weekly | month_ends | yearly
    # restic's count: 7 daily + 3 new weekly + 11 new monthly + 6 new yearly.
    assert len(plan.keep) == 27
    assert len(plan.delete) == len(backups) - 27
    assert plan.keep["full-2023-12-31"][:4] == [
        "daily 2023-12-31",
        "weekly 2023-W52",
        "monthly 2023-12",
        "yearly 2023",
    ]
    assert plan.keep["full-2017-12-31"] == ["yearly 2017"]
    assert (
        "not kept by any GFS tier (7 daily, 4 weekly, 12 monthly, 7 yearly)" in plan.delete["full-2016-12-31"]
    )


def test_daily_counts_days_that_have_backups_not_calendar_days() -> None:
    backups = [b for i, b in enumerate(daily_fulls(date(2024, 1, 1), date(2024, 1, 30))) if i % 2 == 0]
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=7, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=datetime(2024, 2, 1, tzinfo=UTC),
    )
    assert sorted(kept_days(plan)) == [f"2024-01-{d:02d}" for d in range(17, 30, 2)]


def test_newest_backup_of_a_day_week_month_is_the_one_kept() -> None:
    backups = [
        make("morning", datetime(2024, 5, 6, 1, tzinfo=UTC)),
        make("evening", datetime(2024, 5, 6, 22, tzinfo=UTC)),
        make("monday", datetime(2024, 5, 13, 1, tzinfo=UTC)),  # same month, next ISO week
    ]
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=5, weekly=5, monthly=5, yearly=0), retention_days=None,
        now=datetime(2024, 6, 1, tzinfo=UTC),
    )
    assert plan.keep["monday"] == [
        "daily 2024-05-13",
        "weekly 2024-W20",
        "monthly 2024-05",
        "newest backup",
        "newest verified backup",
    ]
    assert plan.keep["evening"] == ["daily 2024-05-06", "weekly 2024-W19"]
    assert list(plan.delete) == ["morning"]


def test_default_policy_is_the_seed_gfs() -> None:
    backups = daily_fulls(date(2016, 1, 1), date(2023, 12, 31))
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert plan_retention(backups, gfs=None, retention_days=None, now=now) == plan_retention(
        backups, gfs=SEED_GFS, retention_days=None, now=now
    )


def test_retention_days_keeps_everything_younger() -> None:
    backups = daily_fulls(date(2024, 1, 1), date(2024, 3, 31))
    plan = plan_retention(backups, gfs=None, retention_days=30, now=datetime(2024, 4, 1, 1, tzinfo=UTC))
    assert sorted(kept_days(plan)) == [(date(2024, 3, 2) + timedelta(days=i)).isoformat() for i in range(30)]
    assert plan.delete["full-2024-03-01"] == "older than 30 days"


def test_young_incremental_keeps_its_whole_chain() -> None:
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    backups = [make("full", t0)]
    for i in range(1, 11):
        backups.append(make(f"inc{i}", t0 + timedelta(days=i), "INCREMENTAL", backups[-1].backup_id))
    backups.append(make("full2", t0 + timedelta(days=3, hours=1)))  # a newer full, off-chain
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=1, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=t0 + timedelta(days=10, hours=12),
    )
    # inc10 is young; everything it needs back to 'full' stays although old.
    assert set(plan.keep) == {"full", *(f"inc{i}" for i in range(1, 11)), "full2"}
    assert plan.keep["full"] == ["parent of inc1"]
    assert plan.keep["full2"] == ["daily 2024-01-04"]
    assert "INCREMENTAL younger than 7 days" in plan.keep["inc10"]


def test_old_incrementals_without_kept_descendants_go() -> None:
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    backups = [
        make("full-old", t0),
        make("inc-a", t0 + timedelta(hours=6), "INCREMENTAL", "full-old"),
        make("inc-b", t0 + timedelta(hours=12), "INCREMENTAL", "inc-a"),
        make("full-new", t0 + timedelta(days=20)),
        make("log-new", t0 + timedelta(days=20, hours=1), "TRANSACTION_LOG", "full-new"),
    ]
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=1, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=t0 + timedelta(days=21),
    )
    assert set(plan.delete) == {"full-old", "inc-a", "inc-b"}
    assert plan.delete["inc-b"] == "INCREMENTAL older than 7 days, and no kept backup depends on it"
    assert plan.keep["full-new"][0] == "daily 2024-01-21"
    assert "parent of log-new" in plan.keep["full-new"]


def test_full_max_age_keeps_only_monthly_and_yearly() -> None:
    backups = daily_fulls(date(2024, 1, 1), date(2024, 3, 31))
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=60, weekly=10, monthly=12, yearly=1), retention_days=None,
        now=datetime(2024, 4, 1, tzinfo=UTC), full_max_age_days=30,
    )
    old_kept = {d for d in kept_days(plan) if d < "2024-03-02"}
    assert old_kept == {"2024-01-31", "2024-02-29"}
    assert plan.keep["full-2024-01-31"] == ["monthly 2024-01"]
    assert plan.delete["full-2024-02-28"] == "FULL older than 30 days and not a monthly or yearly keep"
    assert len([d for d in kept_days(plan) if d >= "2024-03-02"]) == 30


def test_schema_backups_have_their_own_gfs_tiers() -> None:
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    backups = []
    for i in range(30):
        backups.append(make(f"full{i:02d}", t0 + timedelta(days=i)))
        backups.append(make(f"schema{i:02d}", t0 + timedelta(days=i, hours=1), "SCHEMA"))
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=3, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=t0 + timedelta(days=40),
    )
    assert set(plan.keep) == {"full27", "full28", "full29", "schema27", "schema28", "schema29"}


def test_newest_verified_backup_survives_everything() -> None:
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    backups = [
        make("good", t0),
        make("bad1", t0 + timedelta(days=1), verified=False),
        make("bad2", t0 + timedelta(days=2), verified=False),
    ]
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=1, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=t0 + timedelta(days=400),
    )
    assert plan.keep == {"good": ["newest verified backup"], "bad2": ["daily 2024-01-03", "newest backup"]}
    none_verified = [make("only", t0, verified=False)]
    plan = plan_retention(
        none_verified,
        gfs=GFSRetention(daily=0, weekly=0, monthly=0, yearly=0),
        retention_days=None,
        now=t0 + timedelta(days=400),
    )
    assert plan.keep == {"only": ["newest backup"]}


def test_schedule_scope_and_other_schedules_protect_parents() -> None:
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    backups = [
        make("full-a", t0),
        make("full-b", t0 + timedelta(days=1)),
        make("inc", t0 + timedelta(days=30), "INCREMENTAL", "full-a", schedule="hourly_incr"),
    ]
    plan = plan_retention(
        backups, gfs=GFSRetention(daily=1, weekly=0, monthly=0, yearly=0), retention_days=None,
        now=t0 + timedelta(days=31), schedule="daily_full",
    )
    assert set(plan.keep) | set(plan.delete) == {"full-a", "full-b"}  # 'inc' is not ours to judge
    assert plan.keep["full-a"] == ["parent of inc"]


def test_bucket_uses_utc_and_iso_weeks() -> None:
    late = datetime(2021, 1, 3, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2021-01-04 04:30 UTC
    assert bucket("daily", late) == "2021-01-04"
    assert bucket("weekly", datetime(2021, 1, 3, tzinfo=UTC)) == "2020-W53"
    assert bucket("monthly", late) == "2021-01"
    assert bucket("yearly", datetime(2020, 12, 31, 23, tzinfo=UTC)) == "2020"


# --- properties over generated histories -----------------------------------------------
# hypothesis draws the shape of a history (length, gap and incremental rates, extra fulls)
# and the policy, so a failure shrinks to a short history and a simple policy; the
# day-by-day noise comes from a drawn seed.


@dataclass(frozen=True)
class Shape:
    seed: int
    start: datetime
    days: int
    gap: float  # chance that a day has no full
    incremental_rate: float  # chance that a day gets incrementals / log backups
    double_full_rate: float  # chance of a second full the same day
    now_after_hours: int  # how long after the last day "now" is


def generate_history(shape: Shape) -> tuple[list[Manifest], datetime]:
    """Daily fulls with gaps, some days with two fulls, incrementals and log backups chained
    onto the latest backup (chains span days), some SCHEMA dumps, some incrementals of
    another schedule, and unverified backups."""
    rng = random.Random(shape.seed)
    backups: list[Manifest] = []
    chain_tip: str | None = None
    for d in range(shape.days):
        day = shape.start + timedelta(days=d)
        if rng.random() >= shape.gap:
            for n in range(2 if rng.random() < shape.double_full_rate else 1):
                bid = f"full-{d}-{n}"
                at = day + timedelta(hours=2 + 10 * n, minutes=rng.randrange(60))
                backups.append(make(bid, at, verified=rng.random() < 0.8))
                chain_tip = bid
        if rng.random() < 0.1:
            at = day + timedelta(hours=3)
            backups.append(make(f"schema-{d}", at, "SCHEMA", verified=rng.random() < 0.8))
        if chain_tip is not None and rng.random() < shape.incremental_rate:
            for n in range(rng.randrange(1, 4)):
                kind = rng.choice(["INCREMENTAL", "INCREMENTAL", "TRANSACTION_LOG"])
                bid = f"inc-{d}-{n}"
                schedule = rng.choice(["daily_full", "daily_full", "hourly_incr"])
                at = day + timedelta(hours=13 + 3 * n)
                backups.append(
                    make(bid, at, kind, chain_tip, verified=rng.random() < 0.8, schedule=schedule)
                )
                chain_tip = bid
    now = shape.start + timedelta(days=shape.days, hours=shape.now_after_hours)
    rng.shuffle(backups)  # the planner must not rely on input order
    return backups, now


shapes = st.builds(
    Shape,
    seed=st.integers(0, 2**32 - 1),
    start=st.datetimes(datetime(2019, 1, 1), datetime(2022, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    days=st.integers(1, 3 * 366),
    gap=st.sampled_from([0.0, 0.1, 0.4, 0.8]),
    incremental_rate=st.sampled_from([0.0, 0.3, 0.9]),
    double_full_rate=st.sampled_from([0.0, 0.25]),
    now_after_hours=st.integers(0, 24 * 10),
)
policies = st.fixed_dictionaries(
    {
        "gfs": st.none()
        | st.builds(
            GFSRetention,
            daily=st.integers(0, 11),
            weekly=st.integers(0, 7),
            monthly=st.integers(0, 14),
            yearly=st.integers(0, 4),
        ),
        "retention_days": st.none() | st.integers(1, 90),
        "full_max_age_days": st.none() | st.integers(7, 120),
        "incremental_max_age_days": st.sampled_from([7, 3, 14]),
        "schedule": st.sampled_from([None, "daily_full"]),
        "window_days": st.none() | st.integers(7, 60),
        "min_backups": st.integers(0, 5),
    }
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same 300 histories on every run and in CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shape=shapes, policy=policies)
def test_retention_properties(shape: Shape, policy: dict) -> None:
    backups, now = generate_history(shape)
    check_plan(shape.seed, backups, now, policy)


def descendants(backups: list[Manifest]) -> dict[str, set[str]]:
    children: dict[str, set[str]] = defaultdict(set)
    for m in backups:
        if m.parent_id:
            children[m.parent_id].add(m.backup_id)
    result: dict[str, set[str]] = {}

    def walk(backup_id: str) -> set[str]:
        if backup_id not in result:
            found: set[str] = set()
            for child in children.get(backup_id, ()):
                found |= {child} | walk(child)
            result[backup_id] = found
        return result[backup_id]

    for m in backups:
        walk(m.backup_id)
    return result


def reference_tier(group: list[Manifest], tier: str, count: int) -> set[str]:
    """The tier computed the other way round: newest backup per period, newest periods."""
    newest: dict[str, Manifest] = {}
    for m in group:
        period = bucket(tier, m.started_at)
        held = newest.get(period)
        if held is None or (m.started_at, m.backup_id) > (held.started_at, held.backup_id):
            newest[period] = m
    return {newest[p].backup_id for p in sorted(newest, reverse=True)[:count]}


def check_plan(seed: int, backups: list[Manifest], now: datetime, policy: dict) -> None:
    plan = plan_retention(backups, now=now, **policy)
    ctx = f"seed {seed}, policy {policy}"
    by_id = {m.backup_id: m for m in backups}
    governed = [m for m in backups if policy["schedule"] in (None, m.schedule)]
    governed_ids = {m.backup_id for m in governed}
    kept, deleted = set(plan.keep), set(plan.delete)

    # Every governed backup is decided exactly once, with reasons.
    assert kept | deleted == governed_ids and not kept & deleted, ctx
    assert all(plan.keep.values()) and all(plan.delete.values()), ctx

    # The newest backup, and the newest verified one, are always kept.
    if governed:
        ordered = sorted(governed, key=lambda m: (m.started_at, m.backup_id))
        assert ordered[-1].backup_id in kept, ctx
        verified = [m for m in ordered if m.verified]
        if verified:
            assert verified[-1].backup_id in kept, ctx

    # Nothing anyone keeps loses an ancestor.
    staying = kept | (set(by_id) - governed_ids)
    for backup_id in staying:
        parent = by_id[backup_id].parent_id
        while parent is not None and parent in by_id:
            assert parent in staying, f"{ctx}: {parent} deleted but {backup_id} needs it"
            parent = by_id[parent].parent_id

    # Nothing younger than retention_days is deleted, no standalone backup younger than
    # window_days, and none of the newest min_backups.
    if policy["retention_days"] is not None:
        window = timedelta(days=policy["retention_days"])
        for backup_id in deleted:
            assert now - by_id[backup_id].started_at >= window, ctx
    check_window_min_and_logs(plan, governed, by_id, staying, now, policy, ctx)

    # GFS tiers: at most `count` keeps per tier and type, one per period, and exactly the
    # reference set when no age cap trims daily/weekly keeps.
    gfs = policy["gfs"] or (None if policy["retention_days"] is not None else SEED_GFS)
    if gfs is not None:
        check_gfs_tiers(plan, governed, by_id, gfs, policy, ctx)
    elif policy["window_days"] is None:
        # retention_days alone: standalone backups outside the window go (unless needed).
        for m in governed:
            if m.backup_type not in DEPENDENT_TYPES and m.backup_id in kept:
                reasons = plan.keep[m.backup_id]
                assert any(not r.startswith(("daily", "weekly", "monthly", "yearly")) for r in reasons), ctx

    check_old_incrementals_go(plan, backups, governed, now, policy, ctx)


def check_window_min_and_logs(
    plan: RetentionPlan,
    governed: list[Manifest],
    by_id: dict[str, Manifest],
    staying: set[str],
    now: datetime,
    policy: dict,
    ctx: str,
) -> None:
    """No standalone backup younger than window_days goes, nor one of the newest
    min_backups; a log whose chain's base stays is kept."""
    deleted = set(plan.delete)
    if policy["window_days"] is not None:
        for backup_id in deleted:
            m = by_id[backup_id]
            if m.backup_type not in DEPENDENT_TYPES:
                assert now - m.started_at >= timedelta(days=policy["window_days"]), ctx
    newest_n = sorted(governed, key=lambda m: (m.started_at, m.backup_id))[::-1][: policy["min_backups"]]
    assert not {m.backup_id for m in newest_n} & deleted, ctx
    for m in governed:
        if m.backup_type != "TRANSACTION_LOG":
            continue
        base = chain_base(m, by_id)
        if base is not None and base.backup_id in staying:
            assert m.backup_id in plan.keep, f"{ctx}: log {m.backup_id} of kept base {base.backup_id} deleted"


def check_gfs_tiers(
    plan: RetentionPlan,
    governed: list[Manifest],
    by_id: dict[str, Manifest],
    gfs: GFSRetention,
    policy: dict,
    ctx: str,
) -> None:
    for kind in {m.backup_type for m in governed} - DEPENDENT_TYPES:
        group = [m for m in governed if m.backup_type == kind]
        for tier in TIERS:
            by_tier = {
                b
                for b in plan.keep
                if by_id[b].backup_type == kind and any(r.startswith(tier + " ") for r in plan.keep[b])
            }
            assert len(by_tier) <= getattr(gfs, tier), ctx
            periods = [bucket(tier, by_id[b].started_at) for b in by_tier]
            assert len(periods) == len(set(periods)), ctx
            expected = reference_tier(group, tier, getattr(gfs, tier))
            if policy["full_max_age_days"] is None or tier in ("monthly", "yearly"):
                assert by_tier == expected, f"{ctx}: {kind} {tier}"
            else:
                assert by_tier <= expected, ctx


def check_old_incrementals_go(
    plan: RetentionPlan,
    backups: list[Manifest],
    governed: list[Manifest],
    now: datetime,
    policy: dict,
    ctx: str,
) -> None:
    """An old incremental nobody needs is deleted."""
    kept, deleted = set(plan.keep), set(plan.delete)
    below = descendants(backups)
    newest_ids = {
        r for r in kept
        if any(w in ("newest backup", "newest verified backup") or w.startswith("one of the newest")
               for w in plan.keep[r])
    }
    inc_limit = timedelta(days=policy["incremental_max_age_days"])
    by_id = {m.backup_id: m for m in backups}
    for m in governed:
        if m.backup_type not in DEPENDENT_TYPES or m.backup_id in newest_ids:
            continue
        base = chain_base(m, by_id) if m.backup_type == "TRANSACTION_LOG" else None
        if base is not None and base.backup_id not in deleted:
            continue  # rule 6: the logs of a retained base stay
        age = now - m.started_at
        window = policy["retention_days"]
        if age < inc_limit or (window is not None and age < timedelta(days=window)):
            continue
        if all(d in deleted for d in below[m.backup_id]):
            assert m.backup_id in deleted, f"{ctx}: {m.backup_id} should go"


# --- apply_retention at a local target -------------------------------------------------


class RecordingTarget(LocalTarget):
    def __init__(self, name: str, root: Path) -> None:
        super().__init__(name, root)
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def store(target: LocalTarget, m: Manifest) -> Manifest:
    payload = m.backup_id.encode() * 10
    obj = StoredObject(name=PAYLOAD_NAME, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    m = m.model_copy(update={"objects": [obj]})
    target.put_bytes(f"{backup_prefix(m.source, m.backup_id)}/{PAYLOAD_NAME}", payload)
    write_manifest(target, m)
    return m


@pytest.fixture
def stocked(tmp_path: Path) -> RecordingTarget:
    target = RecordingTarget("local", tmp_path / "root")
    t0 = datetime(2024, 1, 1, 2, tzinfo=UTC)
    for i in range(5):
        store(target, make(f"full{i}", t0 + timedelta(days=i)))
    store(
        target, make("inc", t0 + timedelta(days=4, hours=1), "INCREMENTAL", "full4", schedule="hourly_incr")
    )
    store(target, make("other-src", t0, source="uploads"))
    return target


NOW = datetime(2024, 3, 1, tzinfo=UTC)
ONE_DAILY = GFSRetention(daily=1, weekly=0, monthly=0, yearly=0)


def test_apply_deletes_manifest_first_then_objects(
    stocked: RecordingTarget, caplog: pytest.LogCaptureFixture
) -> None:
    backups = list_backups(stocked, "events_pg")
    plan = plan_retention(backups, gfs=ONE_DAILY, retention_days=None, now=NOW, schedule="daily_full")
    assert set(plan.delete) == {"full0", "full1", "full2", "full3"}
    with caplog.at_level(logging.INFO):
        deleted = apply_retention(stocked, "events_pg", "daily_full", plan)
    assert deleted == ["full3", "full2", "full1", "full0"]  # newest first
    assert stocked.deleted[:2] == ["events_pg/full3/manifest.json", "events_pg/full3/payload"]
    assert [m.backup_id for m in list_backups(stocked)] == ["other-src", "full4", "inc"]
    assert not (stocked.root / "events_pg" / "full0").exists()
    assert "deleted full0 (FULL not kept by any GFS tier" in caplog.text


def test_apply_dry_run_deletes_nothing(stocked: RecordingTarget, caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_retention(
        list_backups(stocked, "events_pg"), gfs=ONE_DAILY, retention_days=None, now=NOW, schedule="daily_full"
    )
    with caplog.at_level(logging.INFO):
        would = apply_retention(stocked, "events_pg", "daily_full", plan, dry_run=True)
    assert would == ["full3", "full2", "full1", "full0"]
    assert stocked.deleted == []
    assert len(list_backups(stocked)) == 7
    assert "would delete full0" in caplog.text


def test_apply_only_touches_its_schedule(stocked: RecordingTarget) -> None:
    plan = RetentionPlan(delete={"inc": "test", "full0": "test"})
    assert apply_retention(stocked, "events_pg", "daily_full", plan) == ["full0"]
    assert "inc" in {m.backup_id for m in list_backups(stocked)}


def test_apply_rechecks_dependencies_at_the_target(
    stocked: RecordingTarget, caplog: pytest.LogCaptureFixture
) -> None:
    # A plan made without the other schedule's incremental (or before it was written)
    # condemns the full it depends on; the target's listing says otherwise.
    plan = RetentionPlan(delete={"full4": "stale plan", "full3": "stale plan"})
    with caplog.at_level(logging.INFO):
        assert apply_retention(stocked, "events_pg", "daily_full", plan) == ["full3"]
    assert "keeping full4 (parent of inc)" in caplog.text


def test_apply_never_empties_a_schedule(stocked: RecordingTarget) -> None:
    plan = RetentionPlan(delete={f"full{i}": "bad plan" for i in range(5)})
    stocked.delete("events_pg/inc/manifest.json")  # nothing else protects full4 now
    deleted = apply_retention(stocked, "events_pg", "daily_full", plan)
    assert deleted == ["full3", "full2", "full1", "full0"]
    assert [m.backup_id for m in list_backups(stocked, "events_pg")] == ["full4"]


def test_apply_is_idempotent(stocked: RecordingTarget) -> None:
    plan = plan_retention(
        list_backups(stocked, "events_pg"), gfs=ONE_DAILY, retention_days=None, now=NOW, schedule="daily_full"
    )
    apply_retention(stocked, "events_pg", "daily_full", plan)
    assert apply_retention(stocked, "events_pg", "daily_full", plan) == []


# --- orphans: objects of a backup folder with no manifest ------------------------------


def test_orphan_sweep_removes_only_old_manifestless_folders_not_in_flight(tmp_path: Path) -> None:
    from include.backup.retention import find_orphans, sweep_orphans

    target = LocalTarget("disk", tmp_path / "t")
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    old, young, running = (
        "full-20260301T000000Z-aaaaaa", "full-20260310T110000Z-bbbbbb", "full-20260302T000000Z-cccccc",
    )
    for backup_id in (old, young, running):
        target.put_bytes(f"src/{backup_id}/payload", b"sealed")
    target.put_bytes("src/full-20260301T000000Z-dddddd/payload", b"sealed")  # a real backup
    target.put_bytes("src/full-20260301T000000Z-dddddd/manifest.json", b"{}")
    target.put_bytes("src/someone-else/payload", b"not ours")  # not one of our ids
    target.put_bytes("other/full-20260301T000000Z-eeeeee/payload", b"another source")
    asked = []

    def in_flight() -> set[str]:
        asked.append(True)
        return {running}

    found = find_orphans(target, "src", now=now, grace=timedelta(hours=48), in_flight=in_flight)
    assert found == {old: [f"src/{old}/payload"]} and asked
    assert sweep_orphans(target, "src", now=now, grace=timedelta(hours=48), in_flight=in_flight,
                         dry_run=True) == [old]
    assert target.stat(f"src/{old}/payload") is not None  # a dry run deletes nothing
    assert sweep_orphans(target, "src", now=now, grace=timedelta(hours=48), in_flight=in_flight) == [old]
    left = sorted(o.key for o in target.list(""))
    assert left == sorted([
        f"src/{young}/payload", f"src/{running}/payload", "src/full-20260301T000000Z-dddddd/manifest.json",
        "src/full-20260301T000000Z-dddddd/payload", "src/someone-else/payload",
        "other/full-20260301T000000Z-eeeeee/payload",
    ])


def test_orphan_sweep_never_touches_underscore_folders(tmp_path: Path) -> None:
    from include.backup.retention import find_orphans

    target = LocalTarget("disk", tmp_path / "t")
    # Named like one of our ids, but '_' folders (the catalog index) are never ours to sweep.
    target.put_bytes("src/_catalog-20260301T000000Z-aaaaaa/segment", b"index")
    target.put_bytes("src/_catalog/records-1", b"index")
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert find_orphans(target, "src", now=now, grace=timedelta(hours=48), in_flight=set) == {}


# --- a delete cut short, and leftovers of killed uploads -------------------------------

GRACE = timedelta(hours=48)
OLD_IDS = [f"daily_full-2026020{d}T020000Z-{d}{d}{d}{d}{d}{d}" for d in range(1, 5)]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the point runs, no except Exception catches it."""


class KilledAfter(LocalTarget):
    """A target whose process dies just before deleting the key ``die_before``."""

    def __init__(self, name: str, root: Path, die_before: str) -> None:
        super().__init__(name, root)
        self.die_before = die_before

    def delete(self, key: str) -> None:
        if key == self.die_before:
            self.die_before = ""
            raise Killed(key)
        super().delete(key)


def _stock_old(target: LocalTarget) -> None:
    t0 = datetime(2026, 2, 1, 2, tzinfo=UTC)
    for i, backup_id in enumerate(OLD_IDS):
        store(target, make(backup_id, t0 + timedelta(days=i)))


def test_retention_killed_between_manifest_and_payload_leaves_an_unlisted_orphan_the_sweep_removes(
    tmp_path: Path,
) -> None:
    victim = OLD_IDS[2]
    target = KilledAfter("disk", tmp_path / "t", die_before=f"events_pg/{victim}/{PAYLOAD_NAME}")
    _stock_old(target)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    plan = plan_retention(list_backups(target), gfs=ONE_DAILY, retention_days=None, now=now,
                          schedule="daily_full")
    assert set(plan.delete) == set(OLD_IDS[:3])
    with pytest.raises(Killed):
        apply_retention(target, "events_pg", "daily_full", plan)
    # Half deleted: the manifest went first, so it is no longer a listed backup (nothing
    # restores it, chains onto it or counts it), and its payload is an orphan.
    assert [m.backup_id for m in list_backups(target)] == [OLD_IDS[0], OLD_IDS[1], OLD_IDS[3]]
    assert target.stat(f"events_pg/{victim}/{PAYLOAD_NAME}") is not None
    # The retry (Airflow's, or the next cleanup) finishes the listed ones...
    plan = plan_retention(list_backups(target), gfs=ONE_DAILY, retention_days=None, now=now,
                          schedule="daily_full")
    assert apply_retention(target, "events_pg", "daily_full", plan) == [OLD_IDS[1], OLD_IDS[0]]
    # ...and the sweep the orphan, once its id is older than the grace.
    early = sweep_target(target, "events_pg", now=datetime(2026, 2, 4, tzinfo=UTC), grace=GRACE,
                         in_flight=set)
    assert not early and target.stat(f"events_pg/{victim}/{PAYLOAD_NAME}") is not None
    swept = sweep_target(target, "events_pg", now=now, grace=GRACE, in_flight=set)
    assert swept == Swept(orphans=[victim], partial_uploads=[])
    assert [o.key for o in target.list("") if "/_" not in o.key] == [  # '_': the catalog index
        f"events_pg/{OLD_IDS[3]}/{MANIFEST_NAME}", f"events_pg/{OLD_IDS[3]}/{PAYLOAD_NAME}"
    ]
    assert not (target.root / "events_pg" / victim).exists()


def _leave_temp(target: LocalTarget, key: str, written: datetime) -> Path:
    """What a put of ``key`` killed halfway leaves: its temporary file, last written then."""
    dest = target.root / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / temp_name(dest.name)
    tmp.write_bytes(b"half an upload")
    os.utime(tmp, (written.timestamp(), written.timestamp()))
    return tmp


def test_sweep_removes_temp_files_of_killed_uploads_after_the_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = LocalTarget("disk", tmp_path / "t")
    _stock_old(target)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    long_ago, just_now = now - timedelta(days=10), now - timedelta(minutes=5)
    kept_id, deleted_id, running_id = OLD_IDS[3], OLD_IDS[0], "daily_full-20260201T030000Z-abcdef"
    stale = [
        # a manifest re-write (verify) killed beside a good backup
        _leave_temp(target, f"events_pg/{kept_id}/{MANIFEST_NAME}", long_ago),
        # a payload upload killed, its backup deleted by retention since: the temp file
        # outlived it, alone in the folder, and nothing lists it
        _leave_temp(target, f"events_pg/{deleted_id}/{PAYLOAD_NAME}", long_ago),
    ]
    fresh = [
        _leave_temp(target, f"events_pg/{OLD_IDS[1]}/{PAYLOAD_NAME}", just_now),  # still writing
        _leave_temp(target, f"events_pg/{running_id}/{PAYLOAD_NAME}", long_ago),  # its run in flight
        _leave_temp(target, f"events_pg/_catalog/{MANIFEST_NAME}", long_ago),  # never '_' folders
        _leave_temp(target, f"events_pg/not-ours/{PAYLOAD_NAME}", long_ago),  # nor foreign ones
        _leave_temp(target, f"uploads/{deleted_id}/{PAYLOAD_NAME}", long_ago),  # another source
    ]
    target.delete(f"events_pg/{deleted_id}/{MANIFEST_NAME}")
    target.delete(f"events_pg/{deleted_id}/{PAYLOAD_NAME}")
    assert all(o.key.split("/")[1] != deleted_id for o in target.list(""))  # hidden from listings

    dry = sweep_target(target, "events_pg", now=now, grace=GRACE, in_flight=lambda: {running_id},
                       dry_run=True)
    assert sorted(dry.partial_uploads) == sorted(str(p.relative_to(target.root)) for p in stale)
    assert all(p.exists() for p in stale)
    with caplog.at_level(logging.INFO):
        swept = sweep_target(target, "events_pg", now=now, grace=GRACE, in_flight=lambda: {running_id})
    assert swept.orphans == [] and swept.partial_uploads == dry.partial_uploads
    assert not any(p.exists() for p in stale) and all(p.exists() for p in fresh)
    assert not (target.root / "events_pg" / deleted_id).exists()  # the emptied folder went too
    assert f"removed the temporary upload file 'events_pg/{deleted_id}/.payload.tmp-" in caplog.text
    assert len(list_backups(target)) == 3  # the backups untouched
    assert sweep_target(target, "events_pg", now=now, grace=GRACE, in_flight=lambda: {running_id}) == Swept()


def test_partial_upload_removal_refuses_objects(tmp_path: Path) -> None:
    target = LocalTarget("disk", tmp_path / "t")
    target.put_bytes("src/b/payload", b"a backup")
    with pytest.raises(TargetError, match="not a temporary upload file"):
        target.remove_partial_upload(PartialUpload("src/b/payload", None))
    assert target.stat("src/b/payload") is not None


class Unreachable(LocalTarget):
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise TargetError(f"target '{self.name}': cannot reach the server; check it is up")


def test_monitor_sweep_skips_an_unreachable_target_and_sweeps_each_every_few_hours(tmp_path: Path) -> None:
    config = BackupConfig.model_validate({
        "staging_dir": str(tmp_path / "staging"),
        "targets": {name: {"type": "local", "path": str(tmp_path / name)} for name in ("disk", "nas")},
        "sources": {"events_pg": {"type": "postgres", "conn_id": "events_pg"}},
        "schedules": [{"name": "daily_full", "source": "events_pg", "cron": "@daily", "targets": ["disk"]}],
    })
    (tmp_path / "staging").mkdir()
    disk, nas = LocalTarget("disk", tmp_path / "disk"), Unreachable("nas", tmp_path / "nas")
    disk.put_bytes(f"events_pg/{OLD_IDS[0]}/{PAYLOAD_NAME}", b"sealed")  # no manifest
    now = datetime(2026, 3, 1, tzinfo=UTC)

    swept = sweep_all_targets(config, now=now, targets={"nas": nas, "disk": disk})
    assert swept == {"disk": {"events_pg": Swept(orphans=[OLD_IDS[0]])}}  # nas skipped, no raise
    disk.put_bytes(f"events_pg/{OLD_IDS[1]}/{PAYLOAD_NAME}", b"sealed")
    # disk was swept just now: not again for MONITOR_SWEEP_EVERY; nas is tried every round.
    assert sweep_all_targets(config, now=now + timedelta(hours=1), targets={"disk": disk}) == {}
    later = now + MONITOR_SWEEP_EVERY
    assert sweep_all_targets(config, now=later, targets={"disk": disk}) == {
        "disk": {"events_pg": Swept(orphans=[OLD_IDS[1]])}
    }
