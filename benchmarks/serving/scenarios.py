"""The four request shapes of issue #7, built from a bundle's catalog and schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.serving.loadgen import Load, lua_long_string

ATTRS = {"age": 31, "gender": "F", "occupation": "engineer", "zip": "94110"}
HEADERS = {"X-Variant": "mail"}  # every scenario on the MAIL variant (the zero-shot tower in play)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    load: Load


def _body(**fields: object) -> str:
    return json.dumps(fields, separators=(",", ":"))


def uncached_lua(user_ids: list[str], occupations: list[str], candidates: list[str], k: int) -> str:
    """request(): a random training user id and random attributes each time, so the vector key
    (a hash of the encoded attributes) is almost never one seen before; misses are counted."""
    users = "{" + ",".join(lua_long_string(u) for u in user_ids) + "}"
    occs = "{" + ",".join(lua_long_string(o) for o in occupations) + "}"
    tail = _body(candidates=candidates, k=k)[1:]  # '"candidates":[...],"k":10}'
    return f"""
math.randomseed(os.time() + math.floor(os.clock() * 1e6))  -- a new sequence each run, never warmed up
local users = {users}
local occs = {occs}
local genders = {{"M", "F"}}
local zips = {{"02139", "10025", "27514", "30329", "48103", "55414", "60201", "78741", "94110", "T8H1N"}}
local tail = {lua_long_string(tail)}
request = function()
  local body = '{{"user_id":"' .. users[math.random(#users)] .. '","attributes":{{"age":' ..
    math.random(7, 73) .. ',"gender":"' .. genders[math.random(2)] .. '","occupation":"' ..
    occs[math.random(#occs)] .. '","zip":"' .. zips[math.random(#zips)] .. '"}},' .. tail
  return wrk.format(nil, nil, nil, body)
end
"""


def build(bundle: Path, k: int = 10) -> list[Scenario]:
    catalog = json.loads((bundle / "catalog.json").read_text())
    schema = json.loads((bundle / "schema.json").read_text())
    ids: list[str] = catalog["ids"]
    rng = np.random.default_rng(0)
    picked = [ids[i] for i in rng.permutation(len(ids))[:150]]
    candidates, history = picked[:100], picked[100:150]
    vocab = {f["name"]: list(f["vocab"]) for f in schema["user_fields"]}
    return [
        Scenario(
            "cold_cached_100",
            "new user, virtual behavior cached in Redis, 100 candidates",
            Load(HEADERS, _body(user_id="bench-cold", attributes=ATTRS, candidates=candidates, k=k)),
        ),
        Scenario(
            "cold_uncached_100",
            "cold user whose vector is not cached (random attributes and training user id), 100 candidates",
            Load(HEADERS, lua=uncached_lua(vocab["user_id"], vocab["occupation"], candidates, k)),
        ),
        Scenario(
            "warm_history50_100",
            "user with a 50-item history in the request, 100 candidates",
            Load(
                HEADERS,
                _body(user_id="bench-warm", attributes=ATTRS, history=history, candidates=candidates, k=k),
            ),
        ),
        Scenario(
            "cold_catalog",
            f"new user (cached vector), the whole catalog ({len(ids)} items) as candidates",
            Load(HEADERS, _body(user_id="bench-cold", attributes=ATTRS, k=k)),
        ),
    ]


def sample_body(scenario: Scenario, bundle: Path) -> str:
    """One request body of the scenario (the uncached one: a fixed training user)."""
    if scenario.load.body is not None:
        return scenario.load.body
    catalog = json.loads((bundle / "catalog.json").read_text())
    rng = np.random.default_rng(0)
    candidates = [catalog["ids"][i] for i in rng.permutation(len(catalog["ids"]))[:100]]
    return _body(user_id="1", attributes={**ATTRS, "age": 40}, candidates=candidates, k=10)
