"""Runs the daemon's PolicySync (files datastore, nft) in the current network namespace for a test, driven by JSON
lines on stdin, one answer line each on stdout:

  {"op": "wait", "key": k, "value": v}             -> once the datastore holds v for k and it went through an apply
                                                      (v null: once k went through); with "rejected": n, also
                                                      once the datastore dropped its n-th entry on arrival
  {"op": "add", "namespace", "pod", "endpoint"}    -> endpoint_added's answer: {"refused": reason or null}

Every answer also carries the task's state: {"running", "failures", "problems", "ignored", "isolated", "repairs"}.
Usage: python -m tests.node.policy_sync_runner <datastore dir> <state dir>
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from config.datastore import FilesDatastore
from policy import datastore_sync
from policy.datastore_sync import PolicySync


async def main(data: Path, state: Path) -> None:
    datastore_sync.CHECK_EVERY = 0.2
    ds = FilesDatastore(data, "node1")
    await ds.start()
    sync = PolicySync(ds, "node1", "nft", state, CollectorRegistry())
    task = asyncio.create_task(sync.run())
    await sync.applied.wait()
    reader = asyncio.StreamReader(limit=1 << 24)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        answer: dict = {}
        if request["op"] == "wait":
            k, value, rejected = request["key"], request.get("value"), request.get("rejected")

            def done() -> bool:
                arrived = (value is None or ds.get(k) == value) if rejected is None else \
                    ds.rejected >= rejected or value is not None and ds.get(k) == value
                return arrived and sync.settled(k)

            deadline = time.monotonic() + 20
            while not done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            answer["settled"] = done()
            answer["refusal"] = sync.state.refusal(request["key"])
        elif request["op"] == "add":
            answer["refused"] = await sync.endpoint_added(request["namespace"], request["pod"], request["endpoint"])
        answer.update(running=not task.done(), rejected=ds.rejected, failures=sync.failures._value.get(), repairs=sync.applier.repairs,
                      problems=sync.state.errors, ignored=sync._ignored, isolated=sorted(sync._isolated))
        print(json.dumps(answer), flush=True)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ds.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
