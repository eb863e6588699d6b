"""A node that connects, prints "ready" and waits to be killed: python -m tests.datastore.hold_client SETTINGS_JSON NODE."""
from __future__ import annotations

import asyncio
import sys

from config.datastore import MqttDatastore, MqttSettings


async def main(settings_json: str, node: str) -> None:
    ds = MqttDatastore(MqttSettings.model_validate_json(settings_json), node)
    await ds.start()
    await ds.flush(10)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
