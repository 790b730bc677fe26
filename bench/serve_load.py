"""Load test of the Serve app: N concurrent clients on loopback against a batched and an unbatched
deployment of the same bundle, in one run.

Both apps run side by side in one local Ray (routes /batched and /unbatched); the unbatched one is
the same code with `max_batch_size: 1`. Each client is a closed loop: it posts a clip to
/v1/audio/transcriptions, waits for the answer, and posts again, `--requests` times. Printed per app:
throughput (requests/s over the phase's wall time), p50/p95 latency, mean batch sizes; the last line

    bench serve: clients=32 ... ratio=<batched/unbatched throughput>

    python bench/serve_load.py [--model DIR] [--clients 32] [--requests 4] [--max-batch-size 32] [--threads N]

Without --model it serves an untrained demo bundle (serve.app.resolve_model_dir): the numbers are
then about serving overhead and batching, not about a real model's compute.
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="bundle dir (default: $SPOKENLM_MODEL, models/default or untrained demo)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client per app")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.1, help="0.1 s was best at 32 clients on 2 CPUs (0.02: batches of ~4; 0.25: stalls)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per model replica, both apps (ServeSettings.threads)")
    p.add_argument("--clip", default=str(sorted((REPO / "examples").glob("*.wav"))[0]))
    return p.parse_args(argv)


async def run_phase(url: str, clip: bytes, clients: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[tuple[int, int]] = []
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in range(requests):
            t0 = time.perf_counter()
            r = await http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", clip)},
                                data={"model": "spokenlm", "response_format": "verbose_json"})  # fmt: skip
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                continue
            sizes = r.json()["spokenlm"]["batch_size"]
            batch_sizes.append((sizes["encoder"], sizes["llm"]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(2)))  # warm-up: first calls load lazily
        latencies.clear(), batch_sizes.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "throughput": len(latencies) / wall,
        "p50_ms": q[49] * 1e3,
        "p95_ms": q[94] * 1e3,
        "wall_s": wall,
        "n": len(latencies),
        "errors": errors,
        "encoder_batch": statistics.fmean(b[0] for b in batch_sizes) if batch_sizes else 0.0,
        "llm_batch": statistics.fmean(b[1] for b in batch_sizes) if batch_sizes else 0.0,
    }


def main(argv=None) -> int:
    import ray
    from ray import serve

    from serve.app import bind_app, resolve_model_dir, start_ray

    args = parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    clip = Path(args.clip).read_bytes()
    start_ray(num_cpus=args.num_cpus, log_to_driver=False)
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = {"model_dir": model_dir, "max_new_tokens": args.max_new_tokens, "max_inflight": 4 * args.clients,
                    "threads": args.threads}  # fmt: skip
        variants = {"batched": args.max_batch_size, "unbatched": 1}
        for name, size in variants.items():
            batching = {"max_batch_size": size, "batch_wait_timeout_s": args.batch_wait_s if size > 1 else 0.0}
            serve.run(bind_app(settings, batching=batching), name=name, route_prefix=f"/{name}")
        results = {}
        for name in variants:
            r = results[name] = asyncio.run(run_phase(f"http://127.0.0.1:{port}/{name}", clip, args.clients, args.requests))
            print(
                f"{name:>9}: {r['n']} requests in {r['wall_s']:.1f} s = {r['throughput']:.2f} req/s, "
                f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms (p95/p50 {r['p95_ms'] / r['p50_ms']:.2f}), "
                f"mean batch encoder {r['encoder_batch']:.1f} llm {r['llm_batch']:.1f}, errors {r['errors']}",
                flush=True,
            )
    finally:
        serve.shutdown()
        ray.shutdown()
    b, u = results["batched"], results["unbatched"]
    print(
        f"bench serve: clients={args.clients} requests={b['n']}+{u['n']} "
        f"batched={b['throughput']:.2f}req/s p50={b['p50_ms']:.0f}ms p95={b['p95_ms']:.0f}ms "
        f"unbatched={u['throughput']:.2f}req/s p50={u['p50_ms']:.0f}ms p95={u['p95_ms']:.0f}ms "
        f"ratio={b['throughput'] / u['throughput']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
