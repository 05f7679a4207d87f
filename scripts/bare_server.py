"""The bare reference for scripts/bench.py: an aiohttp handler (uvloop) that parses the seed's
request with orjson and returns a fixed answer. sessionrec cannot be faster than this."""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web

ANSWER = orjson.dumps({"recommendations": [{"id": str(n), "score": 1.0 - n / 100}
                                           for n in range(20)],
                       "message": "Recommendations based on session interactions."})


async def handler(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    assert "user_interactions" in body
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/iid_recommend", handler)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
