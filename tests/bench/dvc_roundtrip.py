"""DVC at challenge scale: `dvc add`, `dvc push` and `dvc pull` of a 69,168-image folder.

A fresh git + DVC project in --scratch gets the image folder (copied from --images, or files of
seeded random bytes with the synthetic set's size distribution: JPEG bytes do not compress, and
DVC's cost is hashing, linking and copying bytes, not decoding). The project's .dvc/config
settings (cache.type) are applied; the remote is a local folder. Timed: `dvc add`,
`dvc status`, `dvc push`, then `git clone` + `dvc pull` in a second checkout (fresh cache).

    nice -n 10 .venv/bin/python tests/bench/dvc_roundtrip.py --scratch /tmp/dvcbench [--images DIR]

Prints one JSON object (seconds per step, file count, bytes, cache type, date).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CHALLENGE_IMAGES = 69_168
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}


def write_random_images(folder: Path, *, n_files: int, seed: int, min_kb: int, max_kb: int, per_subdir: int) -> int:
    """n_files files of seeded random bytes, sizes uniform in [min_kb, max_kb] KB; total bytes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_kb * 1024, max_kb * 1024 + 1, n_files)
    pool = rng.bytes(int(sizes.max()) + n_files)  # every file is a distinct slice: no dedup in the cache
    for index, size in enumerate(sizes):
        target = folder / f"{index // per_subdir:03d}" if per_subdir else folder
        target.mkdir(parents=True, exist_ok=True)
        (target / f"img_{index:06d}.jpg").write_bytes(index.to_bytes(8, "little") + pool[index:index + int(size) - 8])
    return int(sizes.sum())


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, env={**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"},
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 1)


def folder_stats(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True, help="empty working folder (several GB)")
    parser.add_argument("--images", type=Path, help="copy this image folder instead of generating files")
    parser.add_argument("--n-files", type=int, default=CHALLENGE_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-kb", type=int, default=15, help="smallest generated file")
    parser.add_argument("--max-kb", type=int, default=40, help="largest generated file (synthetic set: ~28 KB mean)")
    parser.add_argument("--per-subdir", type=int, default=0, help="files per subfolder (0: one flat folder, as the challenge)")
    parser.add_argument("--jobs", type=int, default=0, help="dvc push/pull -j (0: DVC's default)")
    args = parser.parse_args()

    dvc = [sys.executable, "-m", "dvc"]
    project, clone, remote = args.scratch / "project", args.scratch / "clone", args.scratch / "remote"
    if args.scratch.exists() and any(args.scratch.iterdir()):
        sys.exit(f"{args.scratch} is not empty")
    images = project / "data" / "images"
    started = time.perf_counter()
    if args.images:
        shutil.copytree(args.images, images)
    else:
        write_random_images(images, n_files=args.n_files, seed=args.seed, min_kb=args.min_kb, max_kb=args.max_kb,
                            per_subdir=args.per_subdir)
    n_files, n_bytes = folder_stats(images)
    results: dict[str, object] = {"date": date.today().isoformat(), "files": n_files, "bytes": n_bytes,
                                  "prepare_s": round(time.perf_counter() - started, 1),
                                  "source": str(args.images) if args.images else f"random bytes, seed {args.seed}"}

    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=project, check=True)
    cache_type = subprocess.run([*dvc, "config", "cache.type"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    subprocess.run([*dvc, "config", "cache.type", cache_type], cwd=project, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "local", str(remote)], cwd=project, check=True)
    jobs = ["-j", str(args.jobs)] if args.jobs else []
    results["cache_type"] = cache_type
    results["dvc_add_s"] = timed([*dvc, "add", "-q", "data/images"], project)
    results["dvc_status_s"] = timed([*dvc, "status", "-q"], project)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "data"], cwd=project, check=True, env={**os.environ, **GIT_IDENTITY})
    results["dvc_push_s"] = timed([*dvc, "push", "-q", *jobs], project)
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    results["dvc_pull_s"] = timed([*dvc, "pull", "-q", *jobs], clone)
    restored_files, restored_bytes = folder_stats(clone / "data" / "images")
    assert (restored_files, restored_bytes) == (n_files, n_bytes), "pull restored a different folder"
    results["link_type_in_clone"] = "hardlink" if (next((clone / "data" / "images").rglob("*.jpg")).stat().st_nlink > 1) else "copy"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
