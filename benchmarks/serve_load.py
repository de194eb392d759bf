"""Load on `earlytom serve`: the tiny model (eager, random weights) in its own process on 127.0.0.1, streamed
requests from concurrent openai clients over clips of different shapes and answer lengths.

    python -m benchmarks.serve_load [--requests 50] [--clients 8] [--rounds 2] [--frames 8]

Prints throughput and TTFT of requests sent one at a time (the same mix), then per round: throughput,
client-side TTFT (time to the first streamed chunk, queueing included) p50/p90/p99, the pipeline's own TTFT,
latency, and the server's RSS (after the round and its peak, sampled every 20 ms), so growth over rounds shows.
Needs the [serve] extra and openai.
"""

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from benchmarks.common import print_table, summary
from earlytom.runtime.synthetic import moving_square_frames, write_clip

PROMPT = "What moves in this video?"
SHAPES = [(16, 96, None), (24, 64, 12), (8, 48, None), (32, 128, 16)]  # (frames, size, scene cut at)
MAX_TOKENS = [8, 16, 32]


class RssSampler:
    """Peak and current resident memory of one process, read from /proc every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid, self.period, self.peak = pid, period, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def current(self) -> int:
        """RSS in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.peak = max(self.peak, self.current())

    def reset_peak(self) -> None:
        self.peak = self.current()


def start_server(port: int, frames: int, max_queue: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "earlytom.serve", "--model", "tiny", "--frames", str(frames), "--port", str(port)]
    server = subprocess.Popen([*argv, "--max-queue", str(max_queue)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    raise SystemExit("error: the server did not start; run `python -m earlytom.serve --model tiny` to see why")


def clip_urls(directory: Path) -> list[str]:
    urls = []
    for n, (frames, size, cut) in enumerate(SHAPES):
        clip = write_clip(directory / f"clip{n}.mp4", moving_square_frames(frames, size=size, cut_at=cut))
        urls.append("data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode())
    return urls


def ask(client: openai.OpenAI, url: str, max_tokens: int) -> dict:
    """One streamed request: client TTFT and latency (s), the pipeline's TTFT (s), tokens generated."""
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": PROMPT}]
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    first, pipeline_ttft, tokens = None, None, None
    for chunk in stream:
        first = time.perf_counter() - start if first is None else first
        if chunk.model_extra.get("earlytom"):
            pipeline_ttft = chunk.model_extra["earlytom"]["timings_ms"]["ttft"] / 1e3
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first, "latency": time.perf_counter() - start, "pipeline_ttft": pipeline_ttft, "tokens": tokens}


def load_round(client, urls: list[str], requests: int, clients: int) -> tuple[list[dict], float]:
    jobs = [(urls[i % len(urls)], MAX_TOKENS[i % len(MAX_TOKENS)]) for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda job: ask(client, *job), jobs))
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="load rounds (RSS after each shows growth)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--alone", type=int, default=12, help="requests sent one at a time first (the same mix)")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    server = start_server(args.port, args.frames, max_queue=args.clients)
    rss = RssSampler(server.pid)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused", max_retries=0)
        with tempfile.TemporaryDirectory() as tmp:
            urls = clip_urls(Path(tmp))
        for url in urls:  # warm-up: every shape once
            ask(client, url, 4)
        alone, wall = load_round(client, urls, args.alone, 1)
        ttft = summary([r["ttft"] * 1e3 for r in alone])
        pipeline = statistics.median(r["pipeline_ttft"] for r in alone) * 1e3
        print(f"server pid {server.pid}, {args.frames} frames, RSS after warm-up {rss.current() / 2**20:.0f} MiB")
        print(
            f"{args.alone} requests one at a time (the same mix): {args.alone / wall:.2f} req/s, TTFT p50 "
            f"{ttft['median']:.1f} ms, p90 {ttft['p90']:.1f} ms (pipeline p50 {pipeline:.1f} ms)"
        )
        rows = []
        for n in range(1, args.rounds + 1):
            rss.reset_peak()
            results, wall = load_round(client, urls, args.requests, args.clients)
            ttft = summary([r["ttft"] * 1e3 for r in results])
            latency = summary([r["latency"] * 1e3 for r in results])
            pipeline = statistics.median(r["pipeline_ttft"] for r in results) * 1e3
            tokens = sum(r["tokens"] for r in results)
            rows.append(
                [
                    n,
                    f"{args.requests / wall:.2f}",
                    f"{tokens / wall:.0f}",
                    ttft["median"],
                    ttft["p90"],
                    ttft["p99"],
                    pipeline,
                    latency["median"],
                    latency["p99"],
                    f"{rss.current() / 2**20:.0f}",
                    f"{rss.peak / 2**20:.0f}",
                ]
            )
        print(f"\n{args.requests} streamed requests from {args.clients} concurrent clients per round:")
        header = ["round", "req/s", "tok/s", "TTFT p50 ms", "p90", "p99", "pipeline TTFT p50", "latency p50", "p99",
                  "RSS MiB", "peak RSS MiB"]  # fmt: skip
        print_table(header, rows)
    finally:
        rss.stop.set()
        rss.thread.join()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
