"""A producer/consumer pipeline: each finished job feeds the next stage.

    fetch(doc) ──done callback──> count_words(doc, text, shared) ──> shared Manager dict
                                                                 └─> queue of results

Stage 1 jobs "fetch" documents.  When one finishes, its done callback submits a stage-2 job
with the fetched text, without waiting for the other fetches.  Stage-2 jobs write their
counts into a ``multiprocessing.Manager`` dict that every worker shares; the main program
consumes stage-2 futures from a queue as they are created.

Run it:  python examples/pipeline.py
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
import random
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq

WORDS = ("taskq", "runs", "jobs", "on", "worker", "processes", "with", "priorities", "retries")
DOCS = 8


def fetch(doc: int) -> str:
    """Stage 1: pretend to download a document (slow, of varying length)."""
    rng = random.Random(doc)
    time.sleep(rng.uniform(0.1, 0.4))
    return " ".join(rng.choice(WORDS) for _ in range(50 + 10 * doc))


def count_words(doc: int, text: str, shared: Any) -> int:
    """Stage 2: count the words of one document and record the count in the shared dict."""
    words = len(text.split())
    shared[f"doc-{doc}"] = words
    return words


def main() -> None:
    stage2: queue.Queue[Future[Any]] = queue.Queue()
    with multiprocessing.Manager() as manager, taskq.Pool(2) as pool:
        shared = manager.dict()  # a proxy: jobs in any worker read and write the same dict

        def feed_stage2(doc: int, fetched: Future[Any]) -> None:
            # Runs in the parent as soon as `fetched` is done: hand its text to stage 2.
            print(f"  fetched doc-{doc} -> counting its words")
            stage2.put(pool.submit(count_words, doc, fetched.result(), shared))

        for doc in range(DOCS):
            pool.submit(fetch, doc).add_done_callback(functools.partial(feed_stage2, doc))
        total = sum(stage2.get(timeout=30).result(timeout=30) for _ in range(DOCS))
        counts = dict(shared)

    print(f"shared dict filled by the workers: {dict(sorted(counts.items()))}")
    print(f"total words counted: {total} (sum over the shared dict: {sum(counts.values())})")
    print("Notice: documents were counted in the order they finished fetching, not submitted.")


if __name__ == "__main__":
    main()
