"""The load generator side of the benchmark: the uploads, their multipart bodies, and one wrk run."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "wrk_upload.lua"
BOUNDARY = "cxrbenchboundary7d3f9a"


@dataclass
class Upload:
    label: str
    path: Path
    body: Path  # the multipart body wrk posts
    size: tuple[int, int]


def pick_uploads(data_dir: Path, small: str | None, fullres: str | None) -> list[tuple[str, Path]]:
    """A 224x224 JPEG (the first of chest_xray_224/train, sorted) and the largest full-resolution sample by
    pixel count (the conservative case), unless given explicitly."""
    from PIL import Image

    if small is None:
        candidates = sorted((data_dir / "chest_xray_224" / "train").glob("*/*.jpeg"))
        if not candidates:
            sys.exit(f"no JPEG under {data_dir}/chest_xray_224/train (give --data or $CXR_DATA_DIR)")
        small = str(candidates[0])
    if fullres is None:
        candidates = sorted((data_dir / "fullres_samples").glob("*/*.jpeg"))
        if not candidates:
            sys.exit(f"no JPEG under {data_dir}/fullres_samples (give --data or $CXR_DATA_DIR)")

        def pixels(path: Path) -> int:
            with Image.open(path) as image:
                return image.size[0] * image.size[1]

        fullres = str(max(candidates, key=pixels))
    return [("224x224", Path(small)), ("full-res", Path(fullres))]


def make_upload(label: str, path: Path, workdir: Path) -> Upload:
    from PIL import Image

    with Image.open(path) as image:
        size = image.size
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    body = workdir / f"body-{label}.bin"
    body.write_bytes(head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return Upload(label, path, body, size)


def run_wrk(url: str, upload: Upload, *, connections: int, seconds: float, threads: int, workdir: Path) -> dict:
    result = workdir / "wrk-result.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_BODY": str(upload.body), "BENCH_RESULT": str(result),
           "BENCH_CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}"}
    # wrk takes whole seconds
    argv = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, math.ceil(seconds))}s",
            "--timeout", "30s", "-s", str(LUA), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    summary = json.loads(result.read_text())
    summary["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary
