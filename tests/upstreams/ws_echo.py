"""A real WebSocket server for the tunnel tests (the `websockets` package, pinned in
tests/requirements.txt): its first message tells what the handshake carried (path and
headers, names in lowercase), then it echoes every message; `close` makes it close with
code 4000 and reason `bye`.

    python ws_echo.py PORT
"""

import asyncio
import json
import sys

import websockets


async def handler(ws):
    request = ws.request
    headers = {}
    for name, value in request.headers.raw_items():
        headers.setdefault(name.lower(), []).append(value)
    await ws.send(json.dumps({"path": request.path, "headers": headers}))
    async for message in ws:
        if message == "close":
            await ws.close(code=4000, reason="bye")
            return
        await ws.send(message)


async def main(port):
    async with websockets.serve(handler, "127.0.0.1", port, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
