#!/usr/bin/env python3
"""The load benchmark: `python3 benches/bench.py` (see docs/performance.md).

Builds the production profile, seeds fresh SQLite databases directly (not through N HTTP
calls), starts the server and a bare-hyper baseline, runs wrk (1 thread, 32 connections, 10 s by
default) over each scenario, then again with each kept optimisation turned off (on the same
build and database) for the scenarios it exists for, every scenario on each `--compare` build
(for what is chosen at build time), and the deep-page pair without the page cache. Prints a
table of req/s, p50/p99, errors and the ratio to the baseline measured in the same run, with
the share of the machine's CPU time lost to steal and spent in I/O wait during each scenario,
and what each optimisation gains; writes it all as JSON; stops every process it started.
"""

import argparse
import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "target/production/users-api"
BASELINE = ROOT / "target/production/examples/bench_baseline"
WRK_SCRIPT = ROOT / "benches/wrk.lua"


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, **kwargs)


def seed(db_path, users):
    """Creates the schema with the service's own migrations, then inserts users in one statement."""
    run([SERVER, "migrate", "--database-url", f"sqlite://{db_path}", "--log-format", "json"],
        stderr=subprocess.DEVNULL)
    conn = sqlite3.connect(db_path)
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO users (name, name_search, role, email, email_key, created_at, updated_at,
                           created_by, updated_by, version)
        SELECT 'User ' || i, 'user ' || i, CASE i % 3 WHEN 0 THEN 'Dev' WHEN 1 THEN 'Ops' ELSE 'QA' END,
               'user' || i || '@example.com', 'user' || i || '@example.com',
               strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || (? - i) || ' seconds'),
               strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-' || (? - i) || ' seconds'),
               'seed', 'seed', 1
        FROM n
        """,
        (users, users, users),
    )
    conn.commit()
    conn.close()
    out = run([SERVER, "keys", "create", "--name", "bench", "--scope", "admin",
               "--database-url", f"sqlite://{db_path}", "--log-format", "json"],
              capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


class Process:
    """A started server whose address is read from its output; stopped on exit."""

    def __init__(self, cmd, address_from, log=None):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        stream = self.proc.stdout if address_from == "stdout" else self.proc.stderr
        self.addr = None
        while time.time() < deadline and self.addr is None:
            line = stream.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited early")
                continue
            if address_from == "stdout":
                self.addr = line.strip()
            else:
                # `… users_api::startup: listening addr=…`, or the same as a JSON line.
                found = re.search(r"users_api::startup: listening addr=(\S+)", line)
                if found:
                    self.addr = found.group(1)
                elif '"listening"' in line:
                    event = json.loads(line)
                    if event.get("target") == "users_api::startup":
                        self.addr = event["addr"]
        if self.addr is None:
            raise RuntimeError(f"{cmd[0]} did not report an address")
        # Keep draining output so the pipes never fill and block the process; the log is kept
        # only when asked for (`--server-log`: with `RUST_LOG=info`, a line per request).
        for pipe in (self.proc.stdout, self.proc.stderr):
            if log and pipe is self.proc.stderr:
                # `cat` holds the file open; this process need not.
                with open(log, "a") as sink:
                    subprocess.Popen(["cat"], stdin=pipe, stdout=sink)
            else:
                subprocess.Popen(["cat"], stdin=pipe, stdout=subprocess.DEVNULL)

    def peak_rss_kib(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


SERVER_LOG = None

SCENARIOS = {
    "get": "GET /users/{id}",
    "list": "GET /users (50)",
    "create": "POST /users",
    "create_idempotent": "POST /users, Idempotency-Key",
    "patch": "PATCH /users/{id}",
    "mix": "90/10 get/patch",
}

# The kept optimisations, each off: (flags, label, the scenarios it exists for).
WITHOUT = [
    (["--user-cache-mib", "0", "--page-cache-mib", "0"], ", read caches off", ["get", "list"]),
    (["--key-cache-ttl-secs", "0"], ", key cache off", ["get"]),
    (["--sqlite-group-commit", "false"], ", group commit off", ["create", "create_idempotent", "patch"]),
    (["--sqlite-wal-limit-mib", "0"], ", WAL limit off", ["create", "patch"]),
]

# Other settings, for comparison: not optimisations, so no gain is computed.
ALSO = [
    (["--log-format", "json"], ", JSON log lines", ["get", "list"]),
    (["--worker-threads", "1"], ", --worker-threads 1", ["get", "list"]),
]


def server(db_path, extra=(), wrapper=(), binary=None):
    """The service on a free port; `wrapper` runs it under another program; `binary` is another
    build to run instead of the one measured."""
    return Process(
        [*wrapper, binary or SERVER, "serve", "--bind", "127.0.0.1:0", "--database-url", f"sqlite://{db_path}",
         "--rate-limit", "0", "--rate-limit-anonymous", "0",
         "--request-timeout-secs", "60", *extra],
        "stderr",
        SERVER_LOG,
    )


def cpu_times():
    """The machine's CPU time so far, all cores (`/proc/stat`, in clock ticks): `total`, and
    `steal` (time the hypervisor gave this virtual machine's cores to others) and `iowait`."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return {"total": sum(fields), "iowait": fields[4], "steal": fields[7]}


def disturbance(before, after):
    """The share of the machine's CPU time lost to steal and spent waiting for I/O in between:
    a scenario that lost CPU time to steal measured the host as much as the service."""
    total = max(after["total"] - before["total"], 1)
    return {f"{name}_pct": 100 * (after[name] - before[name]) / total for name in ("steal", "iowait")}


def wrk(addr, mode, args, key="", path="/", users=1000):
    # BENCH_RUN tells runs apart: wrk's random numbers repeat from run to run, and idempotency
    # keys made from them alone would replay an earlier run's creates on the same database.
    env = dict(os.environ, BENCH_MODE=mode, BENCH_KEY=key, BENCH_PATH=path, BENCH_USERS=str(users),
               BENCH_RUN=str(time.time_ns()))
    before = cpu_times()
    # Quiet logging: the benchmark measures the service, not the terminal.
    out = run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "5s",
               "-s", str(WRK_SCRIPT), f"http://{addr}"],
              env=env, capture_output=True, text=True).stdout
    disturbed = disturbance(before, cpu_times())
    line = next(l for l in out.splitlines() if l.startswith("BENCH "))
    result = json.loads(line[len("BENCH "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result.update(disturbed)
    return result


def get_json(addr, path, key):
    request = urllib.request.Request(f"http://{addr}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def deep_cursor(addr, key, after_id):
    """The cursor of the page after `after_id`: taken from a real first page and moved (the
    benchmark knows the format; clients treat cursors as opaque)."""
    cursor = get_json(addr, "/api/v1/users?limit=50", key)["next_cursor"]
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload[2] = after_id
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def main():
    global SERVER, SERVER_LOG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--deep-users", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", default=str(ROOT / "target/bench/results.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--server", type=Path, default=SERVER,
                        help="the users-api binary to measure (an earlier build, to compare)")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another build (one without an optimisation that has no flag, say) "
                             "to run the main scenarios on too, in this run and on the same "
                             "database; repeatable")
    parser.add_argument("--server-log", type=Path,
                        help="append the servers' log lines to this file (JSON; RUST_LOG chooses "
                             "what is logged) instead of discarding them, to look for slow requests")
    args = parser.parse_args()
    if args.deep_users < 1000 * 50:
        parser.error("--deep-users must hold 1,000 pages of 50 (at least 50000)")
    first_page = f"GET /users (50), {args.deep_users:,} users, page 1, --page-cache-mib 0"
    deep_page = f"GET /users (50), {args.deep_users:,} users, page 1000, --page-cache-mib 0"
    SERVER = args.server.resolve()
    SERVER_LOG = args.server_log

    if not args.no_build:
        run(["cargo", "build", "--profile", "production", "--bin", "users-api", "--example", "bench_baseline"], cwd=ROOT)

    started = []
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            baseline = Process([BASELINE, "127.0.0.1:0"], "stdout")
            started.append(baseline)
            main_db = Path(tmp) / "bench.db"
            key = seed(main_db, args.users)

            def scenarios(api, label, modes):
                for mode in modes:
                    name = SCENARIOS[mode] + label
                    path = "/api/v1/users?limit=50" if mode == "list" else "/"
                    results[name] = wrk(api.addr, mode, args, key, path=path, users=args.users)

            results["baseline (bare hyper)"] = wrk(baseline.addr, "baseline", args)
            api = server(main_db)
            started.append(api)
            scenarios(api, "", ["get", "list", "create", "create_idempotent", "patch", "mix"])
            peak_rss = api.peak_rss_kib()
            api.stop()

            # Each kept optimisation turned off, on the same build and database, for the
            # scenarios it exists for (docs/performance.md); and one runtime thread.
            for extra, label, modes in WITHOUT + ALSO:
                other = server(main_db, extra=extra)
                started.append(other)
                scenarios(other, label, modes)
                other.stop()

            # Other builds, for optimisations that are chosen at build time.
            for binary in args.compare:
                other = server(main_db, binary=binary.resolve())
                started.append(other)
                scenarios(other, f", build {binary.name}", list(SCENARIOS))
                other.stop()

            deep_db = Path(tmp) / "deep.db"
            deep_key = seed(deep_db, args.deep_users)
            # What a deep page costs against the first, each read from the database.
            deep = server(deep_db, extra=["--page-cache-mib", "0"])
            started.append(deep)
            results[first_page] = wrk(
                deep.addr, "list", args, deep_key, path="/api/v1/users?limit=50")
            cursor = deep_cursor(deep.addr, deep_key, 999 * 50)
            results[deep_page] = wrk(
                deep.addr, "list", args, deep_key, path=f"/api/v1/users?limit=50&cursor={cursor}")
            # Writes into large tables: each touches pages spread over bigger indexes, so
            # more of them reach the WAL and the database file.
            results[f"POST /users, {args.deep_users:,} users"] = wrk(deep.addr, "create", args, deep_key)
    finally:
        for process in started:
            process.stop()

    ceiling = results["baseline (bare hyper)"]["rps"]
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.users} users, "
          f"{os.cpu_count()} cores shared by server and wrk\n")
    print(f"{'scenario':52} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs baseline':>12}"
          f" {'steal':>6} {'iowait':>7}")
    for name, r in results.items():
        r["ratio_to_baseline"] = r["rps"] / ceiling
        errors = r["socket_errors"] + r["non_2xx"]
        print(f"{name:52} {r['rps']:9.0f} {r['p50_us'] / 1000:8.2f} {r['p99_us'] / 1000:8.2f} "
              f"{errors:7d} {r['ratio_to_baseline']:11.1%} {r['steal_pct']:5.1f}% {r['iowait_pct']:6.1f}%")
    first = results[first_page]["rps"]
    deep_rps = results[deep_page]["rps"]
    # I/O wait is shown, not judged: the writes' own fsyncs cause some.
    stolen = [name for name, r in results.items() if r["steal_pct"] >= 1]
    if stolen:
        print(f"\nthe machine lost 1% or more of its CPU time to steal during: {'; '.join(stolen)}: "
              f"those figures measure the host as much as the service")
    print("\nwhat each kept optimisation gains (req/s with it / without it; p99 without it):")
    gains = {}
    for _, label, modes in WITHOUT:
        for mode in modes:
            on, off = results[SCENARIOS[mode]], results[SCENARIOS[mode] + label]
            gain = on["rps"] / max(off["rps"], 1)
            gains[SCENARIOS[mode] + label] = gain
            print(f"  {SCENARIOS[mode] + label:52} {gain:6.2f}x  (p99 {on['p99_us'] / 1000:.2f} ms "
                  f"with, {off['p99_us'] / 1000:.2f} ms without)")
    for binary in args.compare:
        print(f"\nthis build against {binary} (req/s of this one / of that one; p99 of each):")
        for mode, name in SCENARIOS.items():
            on, off = results[name], results[f"{name}, build {binary.name}"]
            gain = on["rps"] / max(off["rps"], 1)
            gains[f"{name}, build {binary.name}"] = gain
            print(f"  {name:52} {gain:6.2f}x  (p99 {on['p99_us'] / 1000:.2f} ms "
                  f"against {off['p99_us'] / 1000:.2f} ms)")
    print(f"\npeak RSS of the server under load: {peak_rss / 1024:.1f} MiB")
    print(f"page 1000 of {args.deep_users:,} users vs page 1: {first / deep_rps:.2f}x the cost")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    summary = {"settings": vars(args), "peak_rss_kib": peak_rss, "results": results, "gains": gains}
    # `default=str` writes the `--server` path as text.
    Path(args.output).write_text(json.dumps(summary, indent=2, default=str))
    print(f"written to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
