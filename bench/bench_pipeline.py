"""Throughput and memory benchmark of the backup pipeline (seal = zstd -> AES-GCM -> SHA-256).

Run on demand from the repo root (it is not a test; it needs a few GB of disk and minutes):

    .venv/bin/python bench/bench_pipeline.py                  # 1 GiB inputs, 4 GiB RSS probe
    .venv/bin/python bench/bench_pipeline.py --size-mib 256 --skip-4g --rounds 2   # quick look
    .venv/bin/python bench/bench_pipeline.py --workdir /var/tmp/bench --keep       # reuse inputs

What it measures, all in the same run and on the same files:

(a) A pg_dump-like text file (COPY blocks of tab-separated ints, timestamps, names, emails,
    statuses; zstd -3 ratio ~4x): wall time of ``zstd -3 -T2 -q -c file > out`` (the
    baseline) against ``seal()`` of the same file. Target: pipeline/zstd throughput >= 0.85.
(b) Incompressible input (os.urandom) through ``seal()``: MB/s (target >= 800 MB/s) and its
    ratio to ``zstd -3 -T2`` on that file; also both with output to /dev/null, which
    separates the pipeline's own cost from the filesystem's (on some VMs writing 1 GiB of
    new page cache alone takes 0.2 to 3 s, varying from run to run).
(c) Peak RSS of ``seal()`` in a child process for 1 GiB and 4 GiB inputs (the 4 GiB input is
    the text file streamed 4 times through a pipe), read with
    ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` by a probe process whose only child is
    the sealing process. Target: < 128 MB and about the same for both sizes.
(d) ``restic backup`` of the text file into a fresh local repository, if restic is on PATH.
(e) The cost of progress reporting (include/backup/progress.py): ``seal()`` with a
    Progress logging its lines (to a handler writing to /dev/null) against ``seal()``
    without, alternating, on both inputs with output to /dev/null (where the pipeline's own
    cost shows most). Target: within 2 %. ``--progress-only`` runs just this part.

Runs alternate baseline and pipeline for ``--rounds`` rounds and report the best (least
disturbed) and median times; ratios use the best times, and the per-round ratios (baseline
and pipeline run seconds apart, so they share the machine's load) are printed too.
"effective cores" is measured before and after with two busy processes: on a shared host it
is often well below the number of vCPUs, and then seal(), which also SHA-256-hashes and
AES-encrypts every stored byte (~0.7 CPU-s per GiB that zstd does not spend), falls
further behind zstd on incompressible data than it does with two free cores. Inputs are
read once before timing so both sides read from the page cache; outputs go to files in the work directory and
``sync`` runs before every timed run so earlier writeback does not land on the next run.
``seal()`` is timed inside its child process (interpreter start-up and imports excluded);
the zstd baseline is timed as a whole process. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ZSTD = shutil.which("zstd") or "/usr/bin/zstd"
MIB = 1 << 20
BENCH_KEK = bytes(range(32))  # benchmark only; never a real key

# -- input data -------------------------------------------------------------------------------

FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Maria",
    "Jose",
    "Ana",
    "Luis",
    "Carmen",
    "Wei",
    "Li",
    "Yuki",
    "Hiro",
    "Fatima",
    "Omar",
    "Aisha",
    "Ivan",
    "Olga",
    "Sven",
    "Ingrid",
    "Pierre",
    "Claire",
    "Hans",
    "Greta",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Mueller",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Ivanova",
    "Tanaka",
    "Kim",
    "Chen",
    "Singh",
    "Kowalski",
]
DOMAINS = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "example.com",
    "proton.me",
    "icloud.com",
    "hotmail.com",
    "company.io",
    "events.org",
    "mail.de",
]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "PL", "JP", "CN", "IN", "BR", "MX", "CA", "AU"]
WORDS = [
    "Annual",
    "Spring",
    "Summer",
    "Autumn",
    "Winter",
    "Tech",
    "Music",
    "Art",
    "Food",
    "Wine",
    "Startup",
    "Charity",
    "Gala",
    "Conference",
    "Meetup",
    "Festival",
    "Workshop",
    "Summit",
    "Expo",
    "Night",
    "Party",
    "Fair",
    "Forum",
    "Retreat",
    "Launch",
    "Dinner",
    "Concert",
]
STATUS = [
    "confirmed",
    "confirmed",
    "confirmed",
    "pending",
    "cancelled",
    "checked_in",
    "checked_in",
    "no_show",
]
CURRENCY = ["USD", "USD", "EUR", "GBP"]
PRICES = [
    f"{p}.{c}"
    for p in (5, 10, 15, 20, 25, 30, 35, 40, 45, 49, 50, 60, 75, 99, 100, 120, 150, 199, 250)
    for c in ("00", "50", "99")
]
USERS_PER_BLOCK, ROWS_PER_BLOCK = 20_000, 30_000


def _ts(t: int) -> str:
    # A simplified calendar (30-day months) is good enough for realistic-looking text.
    d, s = divmod(t, 86400)
    y, d = divmod(d, 360)
    mo, d = divmod(d, 30)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    return f"{2020 + y}-{mo + 1:02d}-{d + 1:02d} {h:02d}:{mi:02d}:{s:02d}+00"


def text_block(index: int) -> bytes:
    """One block (~5.5 MB) of pg_dump COPY data; deterministic per index, independent of others."""
    r = random.Random(index)
    uid0 = index * USERS_PER_BLOCK + 1
    t = index * USERS_PER_BLOCK * 20
    out = [
        f"--\n-- Data for Name: users; Type: TABLE DATA; Schema: public (part {index})\n--\n\n"
        "COPY public.users (id, first_name, last_name, email, created_at, country, is_active) FROM stdin;\n"
    ]
    rows = []
    for uid in range(uid0, uid0 + USERS_PER_BLOCK):
        f, last = r.choice(FIRST), r.choice(LAST)
        t += r.randrange(1, 40)
        rows.append(
            f"{uid}\t{f}\t{last}\t{f.lower()}.{last.lower()}{r.randrange(100)}@{r.choice(DOMAINS)}"
            f"\t{_ts(t)}\t{r.choice(COUNTRIES)}\t{'t' if r.random() < 0.9 else 'f'}\n"
        )
    out += rows
    uid_max = uid0 + USERS_PER_BLOCK
    event0 = 5000 + index * 10
    out.append(
        "\\.\n\nCOPY public.transactions (id, user_id, event_id, amount, currency, created_at, status)"
        " FROM stdin;\n"
    )
    rows = []
    tt = t
    for i in range(index * ROWS_PER_BLOCK, (index + 1) * ROWS_PER_BLOCK):
        tt += r.randrange(0, 20)
        rows.append(
            f"{i}\t{uid_max - r.randrange(1, 20000)}\t{event0 + r.randrange(10)}\t{r.choice(PRICES)}"
            f"\t{r.choice(CURRENCY)}\t{_ts(tt)}\t{r.choice(STATUS)}\n"
        )
    out += rows
    out.append("\\.\n\nCOPY public.guests (id, event_id, user_id, status, checked_in_at, note) FROM stdin;\n")
    rows = []
    for i in range(index * ROWS_PER_BLOCK, (index + 1) * ROWS_PER_BLOCK):
        checked = _ts(t + r.randrange(86400)) if r.random() < 0.5 else "\\N"
        note = f"{r.choice(WORDS)} {r.choice(WORDS)}" if r.random() < 0.2 else ""
        rows.append(
            f"{i}\t{event0 + r.randrange(10)}\t{uid_max - r.randrange(1, 20000)}\t{r.choice(STATUS)}"
            f"\t{checked}\t{note}\n"
        )
    out += rows
    out.append("\\.\n\n")
    return "".join(out).encode()


def make_text(path: Path, size: int) -> None:
    written = 0
    with open(path, "wb") as f, multiprocessing.Pool() as pool:
        # Pool.imap queues the whole iterable up front, so bound it: blocks are >= 4.4 MB.
        for block in pool.imap(text_block, range(size // 4_400_000 + 2), chunksize=1):
            block = block[: size - written]
            f.write(block)
            written += len(block)
            if written >= size:
                pool.terminate()
                break


def make_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def ensure_input(path: Path, size: int, maker) -> None:
    if path.exists() and path.stat().st_size == size:
        print(f"  reusing {path} ({size / MIB:.0f} MiB)")
        return
    t = time.perf_counter()
    maker(path, size)
    print(f"  wrote {path} ({size / MIB:.0f} MiB) in {time.perf_counter() - t:.1f}s")


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass


# -- timed runs -------------------------------------------------------------------------------


def _prepare(out: Path) -> None:
    """Same starting point for every timed run: no old output, no pending writeback."""
    if str(out) != os.devnull:
        out.unlink(missing_ok=True)
    os.sync()


def run_zstd(src: Path, out: Path) -> dict:
    _prepare(out)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with open(out, "wb") as o:
        subprocess.run([ZSTD, "-3", "-T2", "-q", "-c", str(src)], stdout=o, check=True)
    secs = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    stored = out.stat().st_size if str(out) != os.devnull else 0
    return {"seconds": secs, "cpu": cpu, "raw": src.stat().st_size, "stored": stored}


def effective_cores(seconds: float = 0.5) -> float:
    """How many cores this machine really gives two busy processes right now (VMs with
    shared or packed vCPUs often give fewer than os.cpu_count())."""
    code = f"import time\nt=time.perf_counter()\nwhile time.perf_counter()-t<{seconds}: pass"
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for p in procs:
        p.wait()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / seconds


def child_seal(src: str, out: str, threads: int, progress: bool = False) -> None:
    """Child process body: seal src (a path, or '-' for stdin) into out; print JSON stats.
    ``progress``: with a Progress whose task-log lines go to /dev/null, as in a task."""
    import logging

    from include.backup.pipeline.stream import seal
    from include.backup.progress import Progress

    fin = sys.stdin.buffer if src == "-" else open(src, "rb", buffering=0)  # noqa: SIM115
    tracker = None
    if progress:
        logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
        tracker = Progress("bench seal", os.path.getsize(src) if src != "-" else None)
    c0 = os.times()
    t = time.perf_counter()
    with fin, open(out, "wb", buffering=0) as fout:
        r = seal(fin, fout, kek=BENCH_KEK, key_id="bench", threads=threads, progress=tracker)
    if tracker is not None:
        tracker.finish()
    secs = time.perf_counter() - t
    c1 = os.times()
    print(
        json.dumps(
            {
                "seconds": secs,
                "cpu": (c1.user - c0.user) + (c1.system - c0.system),
                "raw": r.raw_size,
                "compressed": r.compressed_size,
                "stored": r.stored_size,
                "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def run_seal(src: Path, out: Path, threads: int, progress: bool = False) -> dict:
    _prepare(out)
    cmd = [sys.executable, __file__, "--_child-seal", str(src), str(out), "--threads", str(threads)]
    if progress:
        cmd.append("--_progress")
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_seal_progress(src: Path, out: Path, threads: int) -> dict:
    return run_seal(src, out, threads, progress=True)


def progress_cost(text: Path, rand: Path, rounds: int, threads: int) -> dict[str, dict]:
    """(e): seal with and without progress reporting, alternating, output to /dev/null."""
    null = Path(os.devnull)
    results: dict[str, dict] = {}
    for label, src in (("text", text), ("random", rand)):
        plan = [
            (f"seal ({label}) > /dev/null", run_seal, null),
            (f"seal + progress ({label}) > /dev/null", run_seal_progress, null),
        ]
        results.update(run_plan(f"progress {label}", src, plan, rounds, threads))
    return results


def add_cost_ns(calls: int = 1_000_000) -> float:
    """Nanoseconds per ``Progress.add`` of one 4 MiB block (what seal() calls per block),
    the log sink's clock reads and line checks included; measured in this process."""
    import logging

    from include.backup.pipeline.stream import READ_BLOCK
    from include.backup.progress import Progress

    logging.getLogger("include.backup.progress").disabled = True
    p = Progress("bench add", calls * READ_BLOCK)
    t = time.perf_counter()
    for _ in range(calls):
        p.add(READ_BLOCK)
    return (time.perf_counter() - t) / calls * 1e9


def print_progress_cost(results: dict[str, dict]) -> None:
    from include.backup.pipeline.stream import READ_BLOCK

    ns = add_cost_ns()
    for label in ("text", "random"):
        off = results[f"seal ({label}) > /dev/null"]
        cpu_per_gib = off["cpu"] / (off["raw"] / (1 << 30)) if off.get("cpu") else None
        calls = (1 << 30) // READ_BLOCK
        on = results[f"seal + progress ({label}) > /dev/null"]
        if cpu_per_gib:
            cost_s = calls * ns / 1e9
            print(
                f"  (e) {label}: Progress.add {ns:.0f} ns per {READ_BLOCK >> 20} MiB block x {calls} per GiB "
                f"= {cost_s * 1e3:.3f} ms CPU per GiB; seal spends {cpu_per_gib:.2f} CPU-s per GiB: "
                f"{cost_s / cpu_per_gib * 100:.4f} %"
            )
        print(f"      CPU s (median) off {off['cpu']:.2f}, on {on['cpu']:.2f}")
    print("  (e) progress on vs off (seal > /dev/null; time on / time off - 1):")
    for label in ("text", "random"):
        off, on = results[f"seal ({label}) > /dev/null"], results[f"seal + progress ({label}) > /dev/null"]
        paired = [1 / r - 1 for r in off["paired"]]  # paired = off / on for each round
        best = on["best"] / off["best"] - 1
        med = statistics.median(paired)
        print(
            f"      {label}: best {best * 100:+.1f} %, per-round "
            + " ".join(f"{p * 100:+.1f}" for p in paired)
            + f" (median {med * 100:+.1f} %)  target within 2 %  {'PASS' if abs(med) <= 0.02 else 'FAIL'}"
        )


def child_rss_probe(sources: list[str], out: str, threads: int) -> None:
    """Probe process: its only child seals the concatenation of sources (fed through a pipe,
    so no multi-GB input file is needed). RUSAGE_CHILDREN then holds exactly that child."""
    cmd = [sys.executable, __file__, "--_child-seal", "-", out, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    for s in sources:
        with open(s, "rb", buffering=0) as f:
            while block := f.read(4 * MIB):
                proc.stdin.write(block)
    proc.stdin.close()
    stats = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    proc.wait()
    stats["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(stats))


def run_rss(sources: list[Path], out: Path, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_child-rss",
        *map(str, sources),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_restic(src: Path, workdir: Path) -> dict | None:
    restic = shutil.which("restic")
    if not restic:
        return None
    repo = workdir / "restic-repo"
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, RESTIC_PASSWORD="bench-only-password", RESTIC_REPOSITORY=str(repo))
    env.setdefault("RESTIC_CACHE_DIR", str(workdir / "restic-cache"))
    subprocess.run([restic, "init", "-q"], env=env, check=True, capture_output=True)
    os.sync()
    t = time.perf_counter()
    subprocess.run([restic, "backup", "-q", str(src)], env=env, check=True, capture_output=True)
    secs = time.perf_counter() - t
    stored = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    version = subprocess.run([restic, "version"], capture_output=True, text=True).stdout.split()[:2]
    shutil.rmtree(repo, ignore_errors=True)
    return {"seconds": secs, "raw": src.stat().st_size, "stored": stored, "version": " ".join(version)}


# -- reporting --------------------------------------------------------------------------------


def mbps(raw: int, secs: float) -> float:
    return raw / 1e6 / secs


def summarise(runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    return {
        "best": min(secs),
        "median": statistics.median(secs),
        "raw": runs[0]["raw"],
        "stored": runs[0]["stored"],
        "cpu": statistics.median(r["cpu"] for r in runs) if all("cpu" in r for r in runs) else None,
    }


def row(name: str, s: dict) -> str:
    cpu = f"{s['cpu']:7.2f}" if s.get("cpu") is not None else "      -"
    stored = (
        f"{s['stored'] / 1e6:9.1f} {s['raw'] / s['stored']:6.2f}" if s["stored"] else f"{'-':>9s} {'-':>6s}"
    )
    return (
        f"{name:38s} {s['best']:7.2f} {s['median']:7.2f} {mbps(s['raw'], s['best']):8.0f} "
        f"{mbps(s['raw'], s['median']):8.0f} {stored} {cpu}"
    )


def run_plan(label: str, src: Path, plan: list, rounds: int, threads: int) -> dict[str, dict]:
    """Alternate the runs of ``plan`` for ``rounds`` rounds; summarise each row."""
    warm(src)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in plan}
    for i in range(rounds):
        times = []
        for name, runner, out in plan:
            res = runner(src, out) if runner is run_zstd else runner(src, out, threads)
            runs[name].append(res)
            null = " >null" if str(out) == os.devnull else ""
            times.append(f"{name.split(' (')[0]}{null} {res['seconds']:.2f}s")
        print(f"  {label} round {i + 1}: " + ", ".join(times))
    results = {name: summarise(rs) for name, rs in runs.items()}
    # Runs of one round are seconds apart, so they share whatever else the machine is
    # doing: per-round ratios are a fairer comparison on a busy host.
    z, s = plan[0][0], plan[1][0]
    results[z]["paired"] = [a["seconds"] / b["seconds"] for a, b in zip(runs[z], runs[s], strict=True)]
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="input size for (a), (b), (c) [1024]")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per comparison [3]")
    ap.add_argument("--threads", type=int, default=2, help="zstd worker threads for seal() [2]")
    ap.add_argument("--workdir", type=Path, help="where inputs/outputs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (reuse inputs next time)")
    ap.add_argument("--skip-4g", action="store_true", help="skip the 4x-size RSS probe")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--progress-only", action="store_true", help="only (e): the cost of progress reporting")
    ap.add_argument("--_progress", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_child-seal", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_child-rss", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child_seal:
        src, out = args._child_seal
        child_seal(src, out, threads=args.threads, progress=args._progress)
        return 0
    if args._child_rss:
        child_rss_probe(args._child_rss, args.out, args.threads)
        return 0

    size = args.size_mib * MIB
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    text, rand = workdir / f"dump-{args.size_mib}m.sql", workdir / f"random-{args.size_mib}m.bin"
    zout, sout = workdir / "out.zst", workdir / "out.sealed"
    print(f"work dir {workdir}; {os.cpu_count()} CPUs; zstd: {ZSTD}; python {sys.version.split()[0]}")
    try:
        print("inputs:")
        ensure_input(text, size, make_text)
        ensure_input(rand, size, make_random)
        if args.progress_only:
            cores = effective_cores()
            print(f"effective cores now: {cores:.2f} of {os.cpu_count()}")
            cost = progress_cost(text, rand, args.rounds, args.threads)
            print(f"\n{'run':38s} {'best s':>7s} {'med s':>7s} {'MB/s':>8s} {'med MB/s':>8s} {'out MB':>9s}"
                  f" {'ratio':>6s} {'cpu s':>7s}")
            for name, s in cost.items():
                print(row(name, s))
            print_progress_cost(cost)
            return 0

        cores_before = effective_cores()
        print(f"effective cores now: {cores_before:.2f} of {os.cpu_count()}")
        results: dict[str, dict] = {}
        null = Path(os.devnull)
        plans = {
            # label: (input, [(row name, runner, output)])
            "text": (
                text,
                [
                    ("zstd -3 -T2 (text)", run_zstd, zout),
                    ("seal (text)", run_seal, sout),
                ],
            ),
            "random": (
                rand,
                [
                    ("zstd -3 -T2 (random)", run_zstd, zout),
                    ("seal (random)", run_seal, sout),
                    ("zstd -3 -T2 (random) > /dev/null", run_zstd, null),
                    ("seal (random) > /dev/null", run_seal, null),
                ],
            ),
        }
        for label, (src, plan) in plans.items():
            results.update(run_plan(label, src, plan, args.rounds, args.threads))
        progress_results = progress_cost(text, rand, args.rounds, args.threads)

        restic = None if args.skip_restic else run_restic(text, workdir)

        print("\nRSS probes:")
        rss = {f"{args.size_mib} MiB": run_rss([text], sout, args.threads)}
        print(f"  {args.size_mib} MiB: {rss[f'{args.size_mib} MiB']['children_maxrss_kb'] / 1024:.1f} MB")
        if not args.skip_4g:
            big = f"{4 * args.size_mib} MiB"
            rss[big] = run_rss([text] * 4, sout, args.threads)
            print(f"  {big}: {rss[big]['children_maxrss_kb'] / 1024:.1f} MB")
    finally:
        for p in (zout, sout):
            p.unlink(missing_ok=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    cores_after = effective_cores()
    print(f"\neffective cores: {cores_before:.2f} before, {cores_after:.2f} after ({os.cpu_count()} vCPUs)")
    print(
        f"{'run':38s} {'best s':>7s} {'med s':>7s} {'MB/s':>8s} {'med MB/s':>8s} {'out MB':>9s}"
        f" {'ratio':>6s} {'cpu s':>7s}"
    )
    for name, s in results.items():
        print(row(name, s))
    if restic:
        restic["best"] = restic["median"] = restic["seconds"]
        print(row(f"restic backup ({restic['version']})", restic) + "   (1 run, repo size)")
        seal_text = results["seal (text)"]
        print(f"  seal vs restic on the same file: {restic['seconds'] / seal_text['median']:.2f}x "
              "(median seal time; target >= 2)")
    else:
        print("restic: not installed" if not args.skip_restic else "restic: skipped")

    zt, st = results["zstd -3 -T2 (text)"], results["seal (text)"]
    zr, sr = results["zstd -3 -T2 (random)"], results["seal (random)"]
    zn, sn = results["zstd -3 -T2 (random) > /dev/null"], results["seal (random) > /dev/null"]
    ratio_text = zt["best"] / st["best"]
    ratio_text_med = zt["median"] / st["median"]
    rand_mbps, rand_mbps_med = mbps(sr["raw"], sr["best"]), mbps(sr["raw"], sr["median"])
    null_mbps = mbps(sn["raw"], sn["best"])
    print(
        f"\nratios (pipeline throughput / zstd -3 -T2 throughput; best of {args.rounds}, median in brackets):"
    )
    paired = zt["paired"]
    print(
        f"  (a) text:   {ratio_text:.2f} ({ratio_text_med:.2f})  target >= 0.85  "
        f"{'PASS' if ratio_text >= 0.85 else 'FAIL'};  per-round ratios "
        + " ".join(f"{r:.2f}" for r in paired)
        + f" (median {statistics.median(paired):.2f})"
    )
    print(
        f"  (b) random: {rand_mbps:.0f} MB/s ({rand_mbps_med:.0f}) to a file  target >= 800  "
        f"{'PASS' if rand_mbps >= 800 else 'FAIL'};  ratio to zstd {zr['best'] / sr['best']:.2f} "
        f"({zr['median'] / sr['median']:.2f}), per-round median "
        f"{statistics.median(zr['paired']):.2f}"
    )
    print(
        f"      random > /dev/null (no filesystem): seal {null_mbps:.0f} MB/s, "
        f"zstd {mbps(zn['raw'], zn['best']):.0f} MB/s, ratio {zn['best'] / sn['best']:.2f}"
    )
    print_progress_cost(progress_results)
    mbs = {k: v["children_maxrss_kb"] / 1024 for k, v in rss.items()}
    ok = all(v < 128 for v in mbs.values())
    print(
        "  (c) peak RSS: "
        + ", ".join(f"{k} {v:.1f} MB" for k, v in mbs.items())
        + f"  target < 128 MB  {'PASS' if ok else 'FAIL'}"
    )
    if restic:
        print(
            f"  (d) restic: {mbps(restic['raw'], restic['seconds']):.0f} MB/s "
            f"({zt['best'] / restic['seconds']:.2f} x zstd), repo {restic['stored'] / 1e6:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
