"""Where one apply spends its time: server and client CPU per step.

    python benchmarks/profile_apply.py [--docs 100000] [--dims 768] [--workers 4] [--rounds 2]

Loads hash documents (as benchmarks/run.py does) into a throwaway server, then runs the
float32 -> float16 apply in this process. A thread samples the server's ``INFO cpu``
(main thread and whole process) and this process's own CPU time (all threads, and the
main thread, which runs the event loop) every 20 ms; each
step's window comes from the progress callback. The sampler costs a little client
time, so totals run a bit above those of benchmarks/compare.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import tempfile
import threading
import time
from typing import Any

import redis
from run import INDEX, load

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.patch import SchemaPatch
from redismigrate.report import MigrationReport
from redismigrate.server import EmbeddedRedis

PATCH = {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}


class Sampler(threading.Thread):
    """(time, server main-thread CPU, server process CPU, own CPU, own main-thread CPU)
    every 20 ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.done = threading.Event()
        main = threading.main_thread().ident
        assert main is not None
        self.main_clock = time.pthread_getcpuclockid(main)

    def run(self) -> None:
        while not self.done.is_set():
            cpu = self.client.info("cpu")
            own = resource.getrusage(resource.RUSAGE_SELF)
            self.samples.append(
                (
                    time.perf_counter(),
                    cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"],
                    cpu["used_cpu_user"] + cpu["used_cpu_sys"],
                    own.ru_utime + own.ru_stime,
                    time.clock_gettime(self.main_clock),
                )
            )
            time.sleep(0.02)

    def at(self, moment: float) -> tuple[float, float, float, float, float]:
        return min(self.samples, key=lambda s: abs(s[0] - moment))


async def apply_once(url: str, workers: int) -> tuple[MigrationReport, list[Any], float, float]:
    plan = await AsyncMigrationPlanner().create_plan(
        INDEX, redis_url=url, schema_patch=SchemaPatch.from_dict(PATCH)
    )
    marks: list[tuple[str, float]] = []

    def on_progress(step: str, done: int, total: int | None) -> None:
        if not marks or marks[-1][0] != step:
            marks.append((step, time.perf_counter()))

    with tempfile.TemporaryDirectory() as backup_dir:
        started = time.perf_counter()
        report = await AsyncMigrationExecutor().apply(
            plan,
            redis_url=url,
            backup_dir=backup_dir,
            num_workers=workers,
            progress_callback=on_progress,
        )
        return report, marks, started, time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        assert server.info is not None
        url = server.info.url
        for _ in range(args.rounds):
            redis.Redis.from_url(url).flushall()
            load(url, args.docs, args.dims, "flat")
            sampler = Sampler(url)
            sampler.start()
            report, marks, started, ended = asyncio.run(apply_once(url, args.workers))
            time.sleep(0.05)
            sampler.done.set()
            sampler.join()
            print(
                f"{report.result}: total {report.total_seconds:.2f} s, "
                f"downtime {report.downtime_seconds:.2f} s"
            )
            heading = ("step", "wall", "server main", "server all", "client", "client main")
            print("  {:12s} {:>6s} {:>12s} {:>11s} {:>7s} {:>12s}".format(*heading))
            bounds = [("start", started), *marks, ("end", ended)]
            for (name, begin), (_, end) in itertools.pairwise(bounds):
                a, b = sampler.at(begin), sampler.at(end)
                print(
                    f"  {name:12s} {end - begin:6.2f} {b[1] - a[1]:12.2f} "
                    f"{b[2] - a[2]:11.2f} {b[3] - a[3]:7.2f} {b[4] - a[4]:12.2f}"
                )


if __name__ == "__main__":
    main()
