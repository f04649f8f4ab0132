#!/usr/bin/env python3
"""The change feed benchmark: `python3 benches/feed.py` (see docs/performance.md).

Builds the production profile and the client (benches/feed_client.rs), then on a fresh SQLite
database: POST throughput with wrk and no subscriber; 1,000 event streams on the server while
writers create 1,000 users a second, timing each event from its create's answer to its arrival
at each stream; POST throughput with wrk while the 1,000 streams receive everything; the
server's peak RSS. With `--postgres URL`, the same across two instances on one PostgreSQL
database: streams on one, writes through the other. Prints a table, writes JSON.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same server, process and wrk helpers)

ROOT = bench.ROOT
CLIENT = ROOT / "target/production/examples/bench_feed"
KEYS = 16  # the streams are spread over several keys, as several consumers would be


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def keys(url):
    made = []
    for i in range(KEYS):
        out = bench.run([bench.SERVER, "keys", "create", "--name", f"feed{i}", "--scope", "admin",
                         "--database-url", url, "--log-format", "json"],
                        capture_output=True, text=True).stdout
        made.append(out.strip().splitlines()[-1])
    return made


def serve(url, extra=(), binary=None):
    return bench.Process(
        [binary or bench.SERVER, "serve", "--bind", "127.0.0.1:0", "--database-url", url,
         "--rate-limit", "0", "--rate-limit-anonymous", "0", "--max-streams", "2000",
         # A stream whose client left holds its slot until its next write finds the connection
         # gone; the phases follow each other faster than that.
         "--max-streams-per-principal", "2000",
         "--max-connections", "4096", "--log-format", "json", *extra],
        "stderr",
    )


def client(stream_addr, write_addr, keys, subscribers, rate, secs):
    out = bench.run([CLIENT, stream_addr, write_addr, ",".join(keys), str(subscribers), str(rate),
                     str(secs)], capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def posts(addr, key, args):
    return bench.wrk(addr, "create", args, key=key)


def scenario(name, url, args, two_instances, extra=(), binary=None):
    subscribers, rate, secs = args.subscribers, args.rate, args.seconds
    writer = serve(url, extra, binary)
    streams = serve(url, extra, binary) if two_instances else writer
    made = keys(url) if not url.startswith("sqlite") else None
    result = {"scenario": name}
    try:
        key_list = made or args.sqlite_keys
        result["posts_alone"] = posts(writer.addr, key_list[0], args)
        result["feed"] = client(streams.addr, writer.addr, key_list, subscribers, rate, secs)
        result["rss_mib"] = streams.peak_rss_kib() / 1024
        # wrk's creates while the streams receive every one of them.
        holder = {}
        hold = threading.Thread(target=lambda: holder.update(
            client(streams.addr, writer.addr, key_list, subscribers, 0, args.duration + 2)))
        hold.start()
        time.sleep(max(3.0, subscribers / 300))  # the streams connect first
        result["posts_with_streams"] = posts(writer.addr, key_list[0], args)
        hold.join()
        result["held"] = holder
        result["rss_flood_mib"] = streams.peak_rss_kib() / 1024
        result["post_ratio"] = result["posts_with_streams"]["rps"] / result["posts_alone"]["rps"]
    finally:
        streams.stop()
        writer.stop()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000, help="creates a second during the timing")
    parser.add_argument("--seconds", type=int, default=10, help="length of the timing")
    parser.add_argument("--duration", type=int, default=10, help="wrk's run, s")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--postgres", help="a PostgreSQL URL whose database may be dropped")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "target/feed-bench.json"))
    parser.add_argument("--without", action="append", default=[], metavar="LABEL=FLAGS",
                        help="also run the SQLite scenario with these server flags")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=BINARY",
                        help="also run the SQLite scenario on another build")
    args = parser.parse_args()
    raise_fd_limit()
    if not args.no_build:
        bench.run(["cargo", "build", "--profile", "production", "--bin", "users-api",
                   "--example", "bench_feed"], cwd=ROOT)
    results = []
    variants = [("SQLite, one instance", (), None)]
    variants += [(f"SQLite, {label}", tuple(flags.split()), None)
                 for label, flags in (v.split("=", 1) for v in args.without)]
    variants += [(f"SQLite, {label}", (), Path(binary).resolve())
                 for label, binary in (v.split("=", 1) for v in args.compare)]
    for name, extra, binary in variants:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite://{tmp}/feed.db"
            bench.run([bench.SERVER, "migrate", "--database-url", url, "--log-format", "json"],
                      stderr=subprocess.DEVNULL)
            args.sqlite_keys = keys(url)
            results.append(scenario(name, url, args, False, extra, binary))
    if args.postgres:
        base, _ = args.postgres.rsplit("/", 1)
        admin = f"{base}/postgres"
        name = "users_api_feed_bench"
        bench.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"])
        bench.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"])
        url = f"{base}/{name}"
        bench.run([bench.SERVER, "migrate", "--database-url", url, "--log-format", "json"],
                  stderr=subprocess.DEVNULL)
        results.append(scenario("PostgreSQL, two instances", url, args, True))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{'scenario':36} {'writes/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'missing':>7} "
          f"{'dup':>4} {'RSS MiB':>8} {'POST alone':>10} {'with streams':>12} {'ratio':>6} "
          f"{'RSS then':>8}")
    for r in results:
        f = r["feed"]
        print(f"{r['scenario']:36} {f['write_rate']:8.0f} {f['p50_ms']:7.1f} {f['p99_ms']:7.1f} "
              f"{f['missing']:7} {f['duplicates']:4} {r['rss_mib']:8.1f} "
              f"{r['posts_alone']['rps']:10.0f} {r['posts_with_streams']['rps']:12.0f} "
              f"{r['post_ratio']:6.2f} {r['rss_flood_mib']:8.1f}")
    print(f"(details in {args.json})")


if __name__ == "__main__":
    main()
