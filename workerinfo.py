"""Which model each live worker serves, for GET /healthz (beside the flow, not in it).

A worker records its model and runtime once it is registered (announce, from run_model_server.py's heartbeat
thread: after its first beat, after Redis comes back, and every REFRESH_S) and deletes the record when it
retires (forget). /healthz lists the live workers (registered, heartbeat present) with their records (serving);
records of workers that died without retiring are pruned there, so the hash never outgrows the live workers
by more than the dead ones since the last /healthz.
"""
import json
import time

import keys

REFRESH_S = 60  # a lost record (Redis restarted between two beats) is back within this; one HSET a minute


def announce(client, prefix, worker_id, model_name, runtime):
    record = {"model": model_name, "runtime": runtime, "since": round(time.time(), 3)}
    client.hset(keys.worker_models(prefix), worker_id, json.dumps(record))


def forget(client, prefix, worker_id):
    client.hdel(keys.worker_models(prefix), worker_id)


def serving(client, prefix):
    """[{"id", "model", "runtime"}] of every live worker, sorted by id; model None if it has no record yet."""
    members = sorted(m.decode() for m in client.smembers(keys.workers(prefix)))
    records = {k.decode(): v for k, v in client.hgetall(keys.worker_models(prefix)).items()}
    with client.pipeline(transaction=False) as pipe:
        for worker_id in members:
            pipe.exists(keys.heartbeat(worker_id, prefix))
        alive = [m for m, exists in zip(members, pipe.execute()) if exists]
    # A record with no heartbeat behind it belongs to a worker that died without retiring. (A new worker
    # beats before it announces, so its record is never taken for a dead one's.)
    stale = [w for w in records if w not in alive and not client.exists(keys.heartbeat(w, prefix))]
    if stale:
        client.hdel(keys.worker_models(prefix), *stale)
    out = []
    for worker_id in alive:
        try:
            record = json.loads(records[worker_id])
        except (KeyError, ValueError, TypeError):
            record = {}
        out.append({"id": worker_id, "model": record.get("model"), "runtime": record.get("runtime")})
    return out
