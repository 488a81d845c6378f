"""The request shapes of issues #7 and #16, built from a bundle's catalog and schema (and, for the
`people` scenarios, from real users' attributes)."""

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


def people_lua(people: list[dict[str, object]], tail: str, clicks: list[str] | None = None) -> str:
    """request(): a new user id (never seen: out of vocabulary) with the attributes of a real user
    drawn at random each time, so the attribute mix, and with it how often the cold-score memo
    (`service.coldscores`) has seen a new user's attributes before, is the population's. With
    `clicks`, a history of two different items drawn from them each time."""
    rows = "{" + ",".join(lua_long_string(json.dumps(p, separators=(",", ":"))) for p in people) + "}"
    pool = "{" + ",".join(lua_long_string(json.dumps(c)) for c in clicks or []) + "}"
    return f"""
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local people = {rows}
local clicks = {pool}
local tail = {lua_long_string(tail)}
local n = 0
request = function()
  n = n + 1
  local history = ''
  if #clicks > 1 then
    local a = math.random(#clicks)
    local b = math.random(#clicks - 1)
    if b >= a then b = b + 1 end
    history = '"history":[' .. clicks[a] .. ',' .. clicks[b] .. '],'
  end
  local body = '{{"user_id":"people-' .. math.random(1e9) .. '-' .. n .. '","attributes":' ..
    people[math.random(#people)] .. ',' .. history .. tail
  return wrk.format(nil, nil, nil, body)
end
"""


def ml100k_people(data_dir: Path) -> list[dict[str, object]]:
    """Every MovieLens 100K user's attributes as a request sends them (u.user:
    id|age|gender|occupation|zip)."""
    out: list[dict[str, object]] = []
    for line in (data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1").splitlines():
        if line.strip():
            _, age, gender, occupation, zipcode = line.split("|")
            out.append({"age": int(age), "gender": gender, "occupation": occupation, "zip": zipcode})
    return out


def build(bundle: Path, k: int = 10, people: list[dict[str, object]] | None = None) -> list[Scenario]:
    catalog = json.loads((bundle / "catalog.json").read_text())
    schema = json.loads((bundle / "schema.json").read_text())
    ids: list[str] = catalog["ids"]
    rng = np.random.default_rng(0)
    picked = [ids[i] for i in rng.permutation(len(ids))[:150]]
    candidates, history = picked[:100], picked[100:150]
    vocab = {f["name"]: list(f["vocab"]) for f in schema["user_fields"]}
    out = [
        Scenario(
            "cold_cached_100",
            "new user, the same attributes every request (virtual behavior cached in Redis; a "
            "cold-score memo hit where the memo is on), 100 candidates",
            Load(HEADERS, _body(user_id="bench-cold", attributes=ATTRS, candidates=candidates, k=k)),
        ),
        Scenario(
            "cold_uncached_100",
            "cold user whose vector is not cached (random attributes and training user id), 100 candidates",
            Load(
                HEADERS, lua=uncached_lua(vocab["user_id"], vocab.get("occupation", ["other"]), candidates, k)
            ),
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
            f"new user, the same attributes every request (cached vector; a memo hit where the memo is on), "
            f"the whole catalog "
            f"({len(ids)} items) as candidates",
            Load(HEADERS, _body(user_id="bench-cold", attributes=ATTRS, k=k)),
        ),
    ]
    if people:
        tails = {"100": _body(candidates=candidates, k=k)[1:], "catalog": _body(k=k)[1:]}
        popular = _most_popular(catalog, CLICK_POOL)
        out += [
            Scenario(
                "cold_people_100",
                f"a new user with the attributes of one of {len(people)} real users, drawn at random, "
                "100 candidates",
                Load(HEADERS, lua=people_lua(people, tails["100"])),
            ),
            Scenario(
                "cold_people_catalog",
                f"a new user with the attributes of one of {len(people)} real users, drawn at random, "
                f"the whole catalog ({len(ids)} items)",
                Load(HEADERS, lua=people_lua(people, tails["catalog"])),
            ),
            Scenario(
                "cold_people_clicked_catalog",
                f"a new user with the attributes of one of {len(people)} real users and 2 clicks on two "
                f"of the {len(popular)} most popular items, drawn at random, the whole catalog",
                Load(HEADERS, lua=people_lua(people, tails["catalog"], popular)),
            ),
        ]
    return out


CLICK_POOL = 100  # a clicked new user's two clicks: among this many most popular items


def _most_popular(catalog: dict[str, object], n: int) -> list[str]:
    """The catalog's `n` most popular item ids (training counts; the first ids without them)."""
    ids = list(catalog["ids"])  # type: ignore[call-overload]
    counts = catalog.get("popularity")
    if not counts:
        return ids[:n]
    order = np.argsort(-np.asarray(counts, np.int64), kind="stable")[:n]
    return [ids[i] for i in order.tolist()]


def sample_body(scenario: Scenario, bundle: Path) -> str:
    """One request body of the scenario (the uncached one: a fixed training user; the people ones:
    a new user with the fixed attributes)."""
    if scenario.load.body is not None:
        return scenario.load.body
    catalog = json.loads((bundle / "catalog.json").read_text())
    if scenario.name.split("+")[0] == "cold_people_catalog":  # also its +no-memo rerun
        return _body(user_id="people-1", attributes=ATTRS, k=10)
    if scenario.name.split("+")[0] == "cold_people_clicked_catalog":
        return _body(user_id="people-1", attributes=ATTRS, history=_most_popular(catalog, 2), k=10)
    rng = np.random.default_rng(0)
    candidates = [catalog["ids"][i] for i in rng.permutation(len(catalog["ids"]))[:100]]
    return _body(user_id="1", attributes={**ATTRS, "age": 40}, candidates=candidates, k=10)
