"""Make the README's pictures: docs/report.png (the report page) and a `gitqueue status` sample.

Builds the 279-package sample with four workers of different speeds in virtual time
(bench/virtual_build.py), prints `gitqueue status` five hours in, finishes the build, writes the
report with `gitqueue html` and takes a screenshot of its top with headless Chromium.

    python scripts/screenshot.py [OUT.png]
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

WORKERS = {"amd64-fast": 1.0, "riscv-board": 2.5, "hp300-1": 6.0, "mac68k": 8.0}


def main():
    import chromium
    from gitqueue.admin import import_jobs, init_queue
    from gitqueue.demo import DEMO_GRAPH
    from gitqueue.importers import load_graph
    from gitqueue.queue import Queue
    from virtual_build import Clock, run

    out = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "report.png")
    with tempfile.TemporaryDirectory(prefix="gq-shot-") as tmp:
        url = os.path.join(tmp, "2026Q1-m68k.git")
        clock = Clock(1_767_225_600.0)
        with Queue(url, os.path.join(tmp, "cache"), clock=clock) as q:
            init_queue(q, "2026Q1-m68k", arch="m68k", os_release="10.1", pkgsrc_branch="pkgsrc-2026Q1",
                       lease_ttl=7200)
            import_jobs(q, load_graph(DEMO_GRAPH), DEMO_GRAPH)
            run(q, clock, WORKERS, stop_at=clock.t + 5 * 3600)
            from gitqueue.cli.view import status_text
            from gitqueue.live import status

            print(status_text(status(q)))
            run(q, clock, WORKERS)
        env = {**os.environ, "GITQUEUE_CACHE": os.path.join(tmp, "cache-html")}
        site = os.path.join(tmp, "site")
        subprocess.run([sys.executable, "-m", "gitqueue", "html", site, "--queue", url], env=env, check=True)
        page = chromium.load(Path(site, "index.html").as_uri(), screenshot=True)
        if page.errors:
            raise SystemExit(f"the page has errors: {page.errors}")
    with open(out, "wb") as f:
        f.write(_top(page.png, 1450))
    print(f"wrote {out}", file=sys.stderr)


def _top(png: bytes, height: int) -> bytes:
    """The top `height` pixels of a PNG (re-encoded with the stdlib: zlib, no image library)."""
    import struct
    import zlib

    chunks, pos = [], 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunks.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    header = dict(chunks)[b"IHDR"]
    width, full, depth, color = struct.unpack(">IIBB", header[:10])
    if full <= height:
        return png
    channels = {2: 3, 6: 4}[color]
    stride = width * channels * depth // 8 + 1
    raw = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    # Filters refer only to the row above: the first rows decode on their own.
    new_header = struct.pack(">II", width, height) + header[8:]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (png[:8] + chunk(b"IHDR", new_header) + chunk(b"IDAT", zlib.compress(raw[:stride * height], 9))
            + chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
