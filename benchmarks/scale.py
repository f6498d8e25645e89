"""Many small inputs through the corpus job: files/s, driver memory, time to first commit, resume time.

    python benchmarks/scale.py --files 10000 [--code DIR] [--work DIR] [--json results.json]

The corpus is single-page PDFs and unsupported text files (every byte unique, so nothing is
deduplicated), the cheap inputs where per-file overhead is all there is. The job runs as
``python -m corpusflow run`` in a subprocess, once on an empty OUT and once more on the finished OUT
(resume). ``--code DIR`` runs another checkout's corpusflow (e.g. a baseline commit) on the same
corpus, so the two are measured on the same machine in the same session.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, files: int, pdf_share: float) -> None:
    """``files`` small inputs under ``root`` (kept between runs: building 100k files takes a while)."""
    import pymupdf

    # Beside the corpus, not in it: every file under CORPUS is an input.
    marker = root.parent / f".{root.name}-complete-{files}-{pdf_share}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Patient information leaflet. Dosing schedule: once daily.")
    template = doc.tobytes()
    pdfs = int(files * pdf_share)
    for i in range(files):
        folder = root / f"batch_{i // 1000:04d}"
        folder.mkdir(exist_ok=True)
        if i < pdfs:  # a comment after %%EOF makes every file's bytes (and hash) its own
            (folder / f"leaflet_{i:07d}.pdf").write_bytes(template + f"% {i}\n".encode())
        else:
            (folder / f"note_{i:07d}.txt").write_text(f"note {i}\n")
    marker.touch()


def run_job(code: Path, corpus: Path, out: Path, config: Path) -> dict:
    """One ``corpusflow run``: wall seconds, time to the first committed file, the driver's peak RSS.

    The corpus job alone: a checkout that builds the search index at the end of a run is told not to
    (older checkouts do not know the flag).
    """
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    usage = subprocess.run([sys.executable, "-m", "corpusflow", "run", "--help"], cwd=code, env=env,
                           capture_output=True, text=True).stdout
    job_only = ["--no-index"] if "--no-index" in usage else []
    # Checkouts with a progress display print the per-file lines that time the first commit on --verbose only.
    job_only += ["--verbose"] if "--verbose" in usage else []
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out),
                             "--config", str(config), *job_only], cwd=code, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    driver = psutil.Process(proc.pid)
    peak, first, tail = 0, None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if first is None and line.startswith("["):  # the job prints one "[i/n] status ..." line per commit
            first = time.time() - t0
        try:
            peak = max(peak, driver.memory_info().rss)
        except psutil.Error:
            pass
    proc.wait()
    if proc.returncode:
        raise SystemExit(f"the job failed ({proc.returncode}) under {code}:\n" + "".join(tail))
    return {"wall_s": round(time.time() - t0, 2), "first_commit_s": round(first, 2) if first else None,
            "driver_peak_rss_mb": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[10000], help="corpus sizes to run")
    ap.add_argument("--pdf-share", type=float, default=0.5)
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose corpusflow runs (default: this one)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/corpusflow-scale"))
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    config = args.work / "job.yaml"
    args.work.mkdir(parents=True, exist_ok=True)
    config.write_text(f"model_cache: {args.work / 'models'}\n")
    results = {"machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                           "python": platform.python_version()},
               "code": str(args.code), "date": time.strftime("%Y-%m-%d"), "runs": []}
    for n in args.files:
        corpus = args.work / f"corpus-{n}"
        make_corpus(corpus, n, args.pdf_share)
        out = args.work / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        first = run_job(args.code, corpus, out, config)
        resume = run_job(args.code, corpus, out, config)
        run = {"files": n, "first": first, "resume": resume, "files_per_s": round(n / first["wall_s"], 1),
               "resume_share": round(resume["wall_s"] / first["wall_s"], 3)}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
