"""The DR page with its History section (dr/cockpit) over N backups: render time of
``GET /dr/`` cold (a fresh app: nothing cached) and warm (the same app again, within the
cache's lifetime), against a baseline measured in the same run: the same page without
the History section and the per-source actions (``cockpit_context`` switched off). The
90-day overview and the source page are then asked for in the same app (their first
request finds the index rows and reports cached by the overview: only their charts and
markup are new work).

    .venv/bin/python bench/bench_dr_page.py                 # N=10,000 (a quiet machine)
    .venv/bin/python bench/bench_dr_page.py --n 500         # quick look
    .venv/bin/python bench/bench_dr_page.py --n 10000 --work /var/tmp/bdp   # made once, kept

The backups are bench/bench_catalog.py's: real signed manifests made with the project's
own code, one an hour (the newest an hour ago), in the catalog index (one base segment and
20 published records), at one local target; plus ``--reports`` DR test reports (one a
day, the newest yesterday, every fifth slower than dr.rto_hours) written with
dr/reports.write_report. Each measurement runs in a fresh child process (imports and the
config load outside the timing); ``--repeat`` children per mode, the median is printed.
Goal (issue 13): 10,000 backups render in under 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("history", "baseline")
PATHS = ("/", "/?days=90", "/source/docs")


def child(mode: str, config: str, keyfile: str) -> None:
    """One fresh app: each path cold (first request), then warm (second request)."""
    import os

    os.environ["BACKUP_CONFIG"] = config
    os.environ["BACKUP_KEY_FILE"] = keyfile
    os.environ["BACKUP_DR_PAGE_CACHE_SECONDS"] = "3600"
    from fastapi.testclient import TestClient

    from include.backup.dr import web

    if mode == "baseline":
        web.cockpit_context = lambda *args, **kwargs: None  # type: ignore[assignment]
    client = TestClient(web.create_app(monitor=web.Monitor(ttl=3600)))
    out: dict[str, Any] = {}
    paths = PATHS if mode == "history" else ("/",)
    for path in paths:
        for temp in ("cold", "warm"):
            t0 = time.perf_counter()
            resp = client.get(path)
            out[f"{path} {temp}"] = time.perf_counter() - t0
            assert resp.status_code == 200, resp.text[:500]
            if mode == "history" and path == "/":
                assert "id='history-docs'" in resp.text
    print(json.dumps(out))


def make_reports(work: Path, config: Path, count: int) -> None:
    from include.backup.config.loader import load_config
    from include.backup.dr.reports import DRTestReport, write_report
    from include.backup.targets import build_target

    target = build_target("bench", load_config(config).config.targets["bench"])
    today = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    for i in range(count):
        started = today - timedelta(days=i + 1)
        rto = 5400.0 if i % 5 == 0 else 1200.0  # dr.rto_hours is 1 in bench_catalog's config
        write_report(target, DRTestReport(
            test_id=f"bench-{i:04d}", test_type="RECOVERY_TIME_TEST", source="docs", success=rto < 3600,
            started_at=started, finished_at=started + timedelta(seconds=rto), measured_rto_seconds=rto,
        ))  # fmt: skip


def prepare(n: int, files: int, reports: int, work: Path) -> tuple[Path, Path]:
    from bench.bench_catalog import make_backups, write_config
    from include.backup.config.loader import load_config
    from include.backup.keys import KeyRing
    from include.backup.targets import build_target

    keyfile, made = work / "keys.json", work / "made"
    config = work / "backup_config.yaml"
    if not made.exists():
        work.mkdir(parents=True, exist_ok=True)
        KeyRing.generate(keyfile, "k1", overwrite=True)
        write_config(work, f"{{type: local, path: {work}/target}}")
        t0 = time.perf_counter()
        target = build_target("bench", load_config(config).config.targets["bench"])
        make_backups(target, n, files, KeyRing.from_file(keyfile), config, keyfile)
        make_reports(work, config, reports)
        made.touch()
        print(
            f"# made {n} backups and {reports} reports in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
    return config, keyfile


def measure(mode: str, config: Path, keyfile: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(config), str(keyfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="backups (default 10,000)")
    ap.add_argument("--files", type=int, default=50, help="file index entries per manifest")
    ap.add_argument("--reports", type=int, default=90, help="DR test reports, one a day")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per mode (median)")
    ap.add_argument("--work", type=Path, help="keep the backups here for the next run")
    args = ap.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dr-page-"))
    config, keyfile = prepare(args.n, args.files, args.reports, work)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for _ in range(args.repeat):
        for mode in MODES:  # alternating, so a load change on the host hits both
            runs[mode].append(measure(mode, config, keyfile))

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    print(f"| N={args.n} | cold / first (s) | warm / again (s) |")
    print("|---|---|---|")
    for path in PATHS:
        print(f"| `GET /dr{path}` with history | {median('history', f'{path} cold'):.3f} | "
              f"{median('history', f'{path} warm'):.3f} |")  # fmt: skip
    base_cold, base_warm = median("baseline", "/ cold"), median("baseline", "/ warm")
    print(f"| `GET /dr/` baseline (no history) | {base_cold:.3f} | {base_warm:.3f} |")
    print(f"| ratio history / baseline | {median('history', '/ cold') / base_cold:.2f} | "
          f"{median('history', '/ warm') / base_warm:.2f} |")  # fmt: skip
    print(f"# work dir: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
