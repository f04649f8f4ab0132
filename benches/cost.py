#!/usr/bin/env python3
"""What one request costs the server, for comparing builds on a noisy, shared machine.

    python3 benches/cost.py instructions BIN [BIN...]   # callgrind: instructions per request
    python3 benches/cost.py cpu BIN [BIN...]            # server CPU time per request under wrk

`instructions` runs each binary under valgrind's callgrind twice, serving N1 and then N2
requests one after another on one keep-alive connection, and reports (I2 - I1) / (N2 - N1):
start-up cancels out, and the count is the same from run to run whatever else the machine is
doing. `cpu` runs wrk (as benches/bench.py does) against each binary in turn, alternating for
--rounds rounds, and reports the median of the server's user+system CPU time per request.
Both seed one fresh database of 1,000 users and use the scenarios /health/live, GET by id and
the 50-user page; `cpu` also knows `--modes create` and `create_idempotent` (POST /users,
without and with an Idempotency-Key, as benches/bench.py runs them; the users they create stay,
so every build's later rounds find a larger table), `patch` and `mix` (PATCH /users/{id}, and
90/10 get/patch, of the seeded users).
"""

import argparse
import http.client
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

PATHS = {
    "health": lambda i: "/health/live",
    "get": lambda i: f"/api/v1/users/{i % 1000 + 1}",
    "list": lambda i: "/api/v1/users?limit=50",
}


def callgrind_total(binary, db, key, mode, requests, out_dir):
    out = Path(out_dir) / f"callgrind.{binary.name}.{mode}.{requests}"
    bench.SERVER = binary
    server = bench.server(db, wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
    try:
        host, port = server.addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        for i in range(requests):
            conn.request("GET", PATHS[mode](i), headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{mode}: status {response.status}")
        conn.close()
    finally:
        # A graceful stop: callgrind writes its counts when the process exits.
        server.stop()
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {out}")


def instructions(args, db, key, tmp):
    for mode in args.modes.split(","):
        if mode not in PATHS:
            raise SystemExit(f"instructions: no mode {mode!r} (one of {', '.join(PATHS)})")
        # Both counts past the first 1,000 GETs, which read each user from the database once:
        # the difference is requests answered as under wrk, from the caches.
        n1, n2 = (200, 600) if mode == "list" else (1000, 3000)
        for binary in args.binaries:
            low = callgrind_total(binary, db, key, mode, n1, tmp)
            high = callgrind_total(binary, db, key, mode, n2, tmp)
            print(f"{mode:7} {binary.name:20} {(high - low) / (n2 - n1):10,.0f} instructions/request")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu(args, db, key):
    costs = {}
    for _ in range(args.rounds):
        for binary in args.binaries:
            bench.SERVER = binary
            server = bench.server(db)
            try:
                for mode in args.modes.split(","):
                    before = cpu_seconds(server.proc.pid)
                    if mode == "health":
                        result = bench.wrk(server.addr, "baseline", args, path="/health/live")
                    elif mode == "get":
                        result = bench.wrk(server.addr, "get", args, key, users=1000)
                    elif mode in ("create", "create_idempotent"):
                        result = bench.wrk(server.addr, mode, args, key)
                    elif mode in ("patch", "mix"):
                        result = bench.wrk(server.addr, mode, args, key, users=1000)
                    else:
                        result = bench.wrk(server.addr, "list", args, key, path=PATHS["list"](0))
                    used = cpu_seconds(server.proc.pid) - before
                    costs.setdefault((mode, binary.name), []).append(
                        (used / result["requests"] * 1e6, result["rps"]))
            finally:
                server.stop()
    for (mode, name), runs in costs.items():
        micros = sorted(m for m, _ in runs)
        rps = sorted(r for _, r in runs)
        print(f"{mode:7} {name:20} {micros[len(micros) // 2]:7.1f} us CPU/request "
              f"(runs: {', '.join(f'{m:.1f}' for m in micros)}), {rps[len(rps) // 2]:,.0f} req/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measure", choices=["instructions", "cpu"])
    parser.add_argument("binaries", nargs="+", type=Path)
    parser.add_argument("--modes", default="health,get,list")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    args.binaries = [b.resolve() for b in args.binaries]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cost.db"
        bench.SERVER = args.binaries[0]
        key = bench.seed(db, 1000)
        if args.measure == "instructions":
            instructions(args, db, key, tmp)
        else:
            cpu(args, db, key)


if __name__ == "__main__":
    sys.exit(main())
