"""The HTTP floor: FastAPI on the service's uvicorn settings, parsing the same request body with the
same pydantic model and answering a fixed, same-sized response with the same headers.

`uvicorn --factory benchmarks.serving.floor:create_app`; MAILREC_FLOOR_RESPONSE names a JSON file
{"body": <the service's response body, as text>, "headers": {...}} captured from the service.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI, Response

from service.schemas import RecommendRequest


def create_app() -> FastAPI:
    captured = json.loads(Path(os.environ["MAILREC_FLOOR_RESPONSE"]).read_text())
    body: bytes = captured["body"].encode()
    headers: dict[str, str] = captured["headers"]
    app = FastAPI(title="mailrec HTTP floor")

    @app.post("/recommend")
    async def recommend(req: RecommendRequest) -> Response:
        return Response(body, 200, headers, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app
