"""Schemathesis hooks for tools/schemathesis.sh.

openapi.json states every rule of a request that JSON Schema can express. A few rules relate
fields to each other, to the server clock or to the server's state, and JSON Schema cannot
state them; the document describes them in words. A "schema-valid request rejected" report is
dropped here only when the request breaks one of those rules and the server's answer names it.
Nothing else is filtered.
"""

import time
from datetime import datetime

import schemathesis

BUCKETS = 10_000
DAY_MS = 24 * 3600 * 1000


def _error(response):
    """(error code, rejection codes) of a JSON error answer."""
    try:
        body = response.json()
    except ValueError:
        return None, []
    if not isinstance(body, dict):
        return None, []
    code = (body.get("error") or {}).get("code")
    rejected = [r.get("code") for r in body.get("rejected") or [] if isinstance(r, dict)]
    return code, rejected


def _ts_ms(ts):
    """Unix milliseconds of an event's `ts` (number or RFC 3339 text); None if unreadable."""
    if isinstance(ts, bool):
        return None
    if isinstance(ts, (int, float)):
        return ts
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _event_breaks_unwritable_rule(event):
    """`ts` outside 1970-01-01 .. one day ahead of the clock."""
    if not isinstance(event, dict) or event.get("ts") is None:
        return False
    ms = _ts_ms(event["ts"])
    now = time.time() * 1000
    return ms is not None and not 0 <= ms <= now + DAY_MS - 60_000


@schemathesis.hook("filter_failure").apply_to(method="POST", path="/v1/events")
def events_refused_for_the_clock_or_deleted_items(ctx, failure, case, response):
    """A batch whose every event is refused because its `ts` is outside the window relative to
    the server clock, or because it names an item deleted earlier in the run (events on deleted
    items are refused: a rule about the server's state, not the request)."""
    code, rejected = _error(response)
    if response.status_code != 400 or code != "invalid_events" or not rejected:
        return True
    events = case.body if isinstance(case.body, list) else []
    for index, reason in enumerate(rejected):
        if reason == "item_deleted":
            continue
        event = events[index] if index < len(events) else None
        if reason == "invalid_timestamp" and _event_breaks_unwritable_rule(event):
            continue
        return True
    return False


def _experiment_breaks_unwritable_rule(body):
    """Duplicate variant names, `control` not among them, or a variant without a bucket."""
    if not isinstance(body, dict) or not isinstance(body.get("variants"), list):
        return False
    variants = [v for v in body["variants"] if isinstance(v, dict)]
    names = [v.get("name") for v in variants]
    if len(set(map(str, names))) != len(names):
        return True
    if body.get("control") is not None and body["control"] not in names:
        return True
    weights = [v.get("weight") for v in variants]
    if all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights):
        total = sum(weights)
        # Largest-remainder allocation can leave a variant whose share is under one bucket
        # without any.
        if any(w * BUCKETS < total for w in weights):
            return True
    return False


@schemathesis.hook("filter_failure").apply_to(method="POST", path="/v1/experiments")
def experiments_with_inconsistent_variants(ctx, failure, case, response):
    code, _ = _error(response)
    if response.status_code == 400 and code == "invalid_experiment":
        return not _experiment_breaks_unwritable_rule(case.body)
    return True


def _event_validator():
    """A validator of one event, from the document's `Event` schema."""
    import json
    import os

    import jsonschema_rs

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi.json")
    with open(root, encoding="utf-8") as f:
        doc = json.load(f)
    schemas = doc["components"]["schemas"]
    event = dict(schemas["Event"])
    event["properties"] = dict(event["properties"])
    event["properties"]["kind"] = schemas["EventKind"]
    return jsonschema_rs.Draft202012Validator(event)


EVENT = _event_validator()


@schemathesis.hook("filter_failure").apply_to(method="POST", path="/v1/events")
def events_refused_one_by_one(ctx, failure, case, response):
    """Events are validated one by one (README): a batch that mixes valid and invalid events is
    a `200` that applies the valid ones and lists each invalid one in `rejected`. Such an answer
    to a batch with schema-violating events is dropped only if every one of them is listed."""
    if response.status_code != 200 or not isinstance(case.body, list):
        return True
    try:
        body = response.json()
    except ValueError:
        return True
    listed = {r.get("index") for r in body.get("rejected") or [] if isinstance(r, dict)}
    invalid = {i for i, event in enumerate(case.body) if not EVENT.is_valid(event)}
    return not invalid or not invalid <= listed
