"""``superduper serve`` under bounded load on 127.0.0.1: the predict and search endpoints against their baselines.

    python benchmarks/serve.py [--seconds 5] [--clients 32] [--rows 100000] [--dim 384] [--repeats 3] [--threads N]

Every server runs in its own process (uvicorn, one process, access log off); the load comes from another process
with ``--clients`` concurrent keep-alive connections for ``--seconds`` per round: wrk (``apt-get install wrk``) where
it is installed, else Python's httpx (slower: it then limits both sides alike). Rounds alternate between the sides;
the medians of ``--repeats`` rounds are printed.

1. Predict with a trivial model (``len`` of a short text):
   - superduper: ``POST /api/v1/models/size/predict`` on ``superduper serve`` over a SQLite file: the API key is
     checked (cached after the first request), the JSON body validated, the model (an ``ObjectModel``, loaded once)
     called through ``predict_batches``, the output encoded, the request timed for the Prometheus metrics;
   - baseline: a bare FastAPI endpoint ``POST /predict`` taking the same JSON and calling the same function, in a
     plain sync ``def`` as superduper's (both run in the server's thread pool).
   Target: superduper's throughput >= 0.7x the bare endpoint's, with no errors.
2. Search over ``--rows`` vectors of ``--dim`` float32 (HNSW index, built before timing):
   - superduper: ``POST /api/v1/indexes/idx/search`` with a query vector, ``n=10``, returning the ``txt`` column and
     the scores, at ``--clients`` concurrent clients;
   - baseline: ``db['docs'].like(vector, vector_index='idx', n=10).select('txt').execute()`` called in process, one
     query after another (the same search and the same rows, without HTTP or JSON).
   Target: the server's throughput >= 0.5x the in-process calls'.

Times are never asserted on; the machine is shared, so read the ratios and medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

CLI = [sys.executable, '-m', 'superduper.cli']


def size(text: str) -> int:
    return len(text)


# ---- servers ------------------------------------------------------------------------------------------------------
def bare_app():  # the baseline of the predict endpoint
    from fastapi import FastAPI

    app = FastAPI()

    @app.post('/predict')
    def predict(body: dict) -> dict:
        return {'output': size(body['input'])}

    return app


def start(command: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    """A server process and its URL; its stderr goes to a file (``process.log``), read once it is stopped."""
    log = tempfile.NamedTemporaryFile('w+', suffix='.log')
    process = subprocess.Popen(command, env=env, stderr=log, stdout=subprocess.DEVNULL, text=True)
    process.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        log.seek(0)
        if found := re.search(r'serving (http://\S+)', log.read()):
            return process, found.group(1)
        time.sleep(0.1)
    log.seek(0)
    raise RuntimeError(f'{command} did not start:\n{log.read()[-3000:]}')


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)
    process.log.seek(0)  # type: ignore[attr-defined]
    if errors := [line for line in process.log.read().splitlines() if 'rror' in line]:  # type: ignore[attr-defined]
        print(f'  the server logged {len(errors)} error lines, e.g. {errors[0][:300]}')
    process.log.close()  # type: ignore[attr-defined]


def serve_bare(port: int) -> None:
    import uvicorn

    config = uvicorn.Config(bare_app(), host='127.0.0.1', port=port, log_level='warning', access_log=False)
    server = uvicorn.Server(config)
    print(f'serving http://127.0.0.1:{port}', file=sys.stderr, flush=True)
    server.run()


# ---- load ---------------------------------------------------------------------------------------------------------
def load(url: str, path: str, bodies: list[dict], clients: int, key: str | None, seconds: float) -> dict:
    """Send ``bodies`` (in turn) with ``clients`` concurrent connections from another process for ``seconds``:
    throughput, p50, p99, errors. wrk (Debian's package) sends them where it is installed; else Python's httpx."""
    import httpx

    warm = httpx.post(url + path, json=bodies[0], headers={'Authorization': f'Bearer {key}'} if key else {}, timeout=300)
    warm.raise_for_status()  # the server has loaded the model or the index before the clock runs
    if shutil.which('wrk'):
        return wrk(url + path, bodies, clients, key, seconds)
    spec = {'url': url, 'path': path, 'bodies': bodies, 'clients': clients, 'key': key, 'seconds': seconds}
    out = subprocess.run([sys.executable, __file__, '--load'], input=json.dumps(spec), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f'the load generator failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout)


WRK_SCRIPT = """
bodies = {%s}
i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"%s}, bodies[i])
end
"""


def wrk(url: str, bodies: list[dict], clients: int, key: str | None, seconds: float) -> dict:
    auth = f', ["Authorization"] = "Bearer {key}"' if key else ''
    with tempfile.NamedTemporaryFile('w', suffix='.lua') as script:
        script.write(WRK_SCRIPT % (','.join('[==[' + json.dumps(b) + ']==]' for b in bodies), auth))
        script.flush()
        out = subprocess.run(['wrk', '-t', '1', '-c', str(clients), '-d', f'{int(seconds)}s', '--latency', '-s',
                              script.name, url], capture_output=True, text=True, check=True).stdout
    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else 0.0

    def ms(label: str) -> float:
        found = re.search(rf'{label}\s+([\d.]+)(us|ms|s)\b', out)
        return float(found.group(1)) * {'us': 1e-6, 'ms': 1e-3, 's': 1.0}[found.group(2)] if found else float('nan')

    errors = number(r'Non-2xx or 3xx responses: (\d+)') + sum(
        int(n) for n in re.findall(r'(?:connect|read|write|timeout) (\d+)', out))
    return {'rps': number(r'Requests/sec:\s+([\d.]+)'), 'p50': ms('50%'), 'p99': ms('99%'), 'errors': int(errors)}


def run_load(spec: dict) -> dict:
    import httpx

    async def main() -> dict:
        headers = {'Authorization': f"Bearer {spec['key']}"} if spec['key'] else {}
        limits = httpx.Limits(max_connections=spec['clients'], max_keepalive_connections=spec['clients'])
        latencies: list[float] = []
        errors = 0
        async with httpx.AsyncClient(base_url=spec['url'], headers=headers, limits=limits, timeout=60) as client:
            await client.post(spec['path'], json=spec['bodies'][0])  # connect, warm the caches

            async def worker() -> None:
                nonlocal errors
                i = 0
                while time.perf_counter() < stop:
                    i += 1
                    sent = time.perf_counter()
                    response = await client.post(spec['path'], json=spec['bodies'][i % len(spec['bodies'])])
                    latencies.append(time.perf_counter() - sent)
                    errors += response.status_code != 200

            started = time.perf_counter()
            stop = started + spec['seconds']
            await asyncio.gather(*(worker() for _ in range(spec['clients'])))
            elapsed = time.perf_counter() - started
        latencies.sort()
        return {'rps': len(latencies) / elapsed, 'p50': latencies[len(latencies) // 2],
                'p99': latencies[int(len(latencies) * 0.99)], 'errors': errors}

    return asyncio.run(main())


# ---- the two comparisons -----------------------------------------------------------------------------------------
def prepare(folder: str, rows: int, dim: int) -> tuple[str, str, np.ndarray]:
    from superduper import ObjectModel, Table, VectorIndex, superduper
    from superduper.server.keys import ApiKeys

    uri = f'sqlite://{folder}/bench.db'
    db = superduper(uri, progress=False)
    try:
        db.apply(ObjectModel('size', object=size, serve=True, input_type='str'))
        db.apply(Table('docs', fields={'txt': 'str', 'v': f'vector[float32:{dim}]'}))
        vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
        for start in range(0, rows, 10_000):
            db['docs'].insert([{'txt': f'row {i}', 'v': vectors[i]} for i in range(start, min(rows, start + 10_000))]
                              ).execute()
        listener = ObjectModel('same', object=lambda v: v, datatype=f'vector[float32:{dim}]').to_listener('docs', key='v')
        db.apply(VectorIndex('idx', indexing_listener=listener, searcher='hnsw'))
        key = ApiKeys(db.metadata).create('bench', 'read')
    finally:
        db.close()
    return uri, key, vectors


def predict_round(superduper_url: str, bare_url: str, key: str, args: argparse.Namespace) -> tuple[dict, dict]:
    bodies = [{'input': f'text number {i}'} for i in range(1000)]
    ours = load(superduper_url, '/api/v1/models/size/predict', bodies, args.clients, key, args.seconds)
    bare = load(bare_url, '/predict', bodies, args.clients, None, args.seconds)
    return ours, bare


def search_round(url: str, key: str, queries: np.ndarray, db, args: argparse.Namespace) -> tuple[dict, float]:
    bodies = [{'query': q.tolist(), 'n': 10, 'columns': ['txt']} for q in queries]
    ours = load(url, '/api/v1/indexes/idx/search', bodies, args.clients, key, args.seconds)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        db['docs'].like(queries[done % len(queries)], vector_index='idx', n=10).select('txt').execute().tolist()
        done += 1
    return ours, done / (time.perf_counter() - started)


def report(name: str, rounds: list[dict]) -> str:
    med = {k: statistics.median(r[k] for r in rounds) for k in ('rps', 'p50', 'p99')}
    errors = sum(r['errors'] for r in rounds)
    return (f"{name:<28} {med['rps']:8.0f} req/s   p50 {med['p50'] * 1000:6.1f} ms   p99 {med['p99'] * 1000:6.1f} ms   "
            f'errors {errors}')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--seconds', type=int, default=5)
    parser.add_argument('--clients', type=int, default=32)
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--dim', type=int, default=384)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help="the server's --threads (default: its own)")
    args = parser.parse_args()
    from superduper import superduper

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, 'SUPERDUPER_HOME': folder, 'SUPERDUPER_PROGRESS': 'false',
               'SUPERDUPER_ARTIFACT_STORE': f'filesystem://{folder}/artifacts'}
        os.environ.update({k: env[k] for k in ('SUPERDUPER_HOME', 'SUPERDUPER_ARTIFACT_STORE')})
        uri, key, vectors = prepare(folder, args.rows, args.dim)
        threads = [] if args.threads is None else ['--threads', str(args.threads)]
        ours, url = start(CLI + ['serve', uri, '--port', '0', *threads], env)
        bare, bare_url = start([sys.executable, __file__, '--bare', '0'], env)
        try:
            rounds = [predict_round(url, bare_url, key, args) for _ in range(args.repeats)]
            print(f'predict, trivial model, {args.clients} clients, {args.seconds:g} s per round, load from '
                  f"{'wrk' if shutil.which('wrk') else 'httpx'}")
            print(report('  superduper serve', [r[0] for r in rounds]))
            print(report('  bare FastAPI endpoint', [r[1] for r in rounds]))
            ratio = statistics.median(a['rps'] / b['rps'] for a, b in rounds)
            print(f'  throughput ratio superduper / bare: {ratio:.2f}x (target >= 0.7x)')

            queries = np.random.default_rng(1).standard_normal((1000, args.dim)).astype(np.float32)
            db = superduper(uri, progress=False, follow_changes=False)
            try:
                db['docs'].like(queries[0], vector_index='idx', n=10).execute().tolist()  # load the index
                found = [search_round(url, key, queries, db, args) for _ in range(args.repeats)]
            finally:
                db.close()
            print(f'search, {args.rows} x {args.dim} vectors (HNSW), n=10, {args.seconds:g} s per round')
            print(report(f'  server, {args.clients} clients', [f[0] for f in found]))
            in_process = statistics.median(f[1] for f in found)
            print(f"  like() in process           {in_process:8.0f} req/s")
            ratio = statistics.median(f[0]['rps'] / f[1] for f in found)
            print(f'  throughput ratio server / in process: {ratio:.2f}x (target >= 0.5x)')
        finally:
            stop(ours)
            stop(bare)


if __name__ == '__main__':
    if sys.argv[1:2] == ['--load']:
        print(json.dumps(run_load(json.loads(sys.stdin.read()))))
    elif sys.argv[1:2] == ['--bare']:
        import socket

        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            free = s.getsockname()[1]
        serve_bare(free)
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        main()
