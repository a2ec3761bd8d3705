"""Regenerate BENCHMARKS.md: every benchmark section, and the machine it ran on.

    python scripts/benchmark.py [--quick] [--only NAME ...] [--out DIR]
    make bench-quick        # quick mode: minutes
    make bench              # full mode

Each section is a module ``scripts/bench_<name>.py`` with ``run(quick, out_dir) -> markdown``.
Plots go to ``docs/`` (committed: BENCHMARKS.md shows them); raw numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("tuning", "memory", "pruning", "recommend", "storage", "speed", "scale", "noise", "coverage")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; GPU: {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grids and few repeats (minutes)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections (others kept)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    target = ROOT / "BENCHMARKS.md"
    previous = _sections(target.read_text()) if target.exists() else {}
    mode, commit = ("quick" if args.quick else "full"), _commit()
    sections = {}
    for name in SECTIONS:
        if args.only and name not in args.only:
            if name in previous:
                sections[name] = previous[name]
            continue
        print(f"== {name} ({mode})", file=sys.stderr, flush=True)
        started = time.perf_counter()
        body = importlib.import_module(f"bench_{name}").run(args.quick, args.out)
        took = time.perf_counter() - started
        sections[name] = Section(f"{body.rstrip()}\n\n_Section took {took:.0f}s._\n", mode,
                                 str(datetime.date.today()), commit)
        print(f"   {took:.0f}s", file=sys.stderr)
        _write(target, {**previous, **sections})  # after each section: a crash loses nothing done or kept
    _write(target, sections)


@dataclass(frozen=True)
class Section:
    """A section's text (after its marker) and the run that made it: mode, date, commit."""

    body: str
    mode: str
    date: str
    commit: str

    def marker(self, name: str) -> str:
        return f"<!-- section:{name} mode:{self.mode} date:{self.date} commit:{self.commit} -->\n"


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def _sections(text: str) -> dict[str, Section]:
    """The sections of an existing BENCHMARKS.md with the run each came from: from its marker
    (``<!-- section:NAME mode:M date:D commit:C -->``), or, for a marker without them (older
    files), from the file's header, which then named one run for every section."""
    header_mode = "quick" if "benchmark.py --quick" in text.split("<!-- section:", 1)[0] else "full"
    header_run = re.search(r"on (\d{4}-\d{2}-\d{2}), commit (\w+)", text.split("<!-- section:", 1)[0])
    bodies: dict[str, list[str]] = {}
    meta: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("<!-- section:"):
            fields = line.removeprefix("<!-- ").removesuffix("-->\n").removesuffix("-->").split()
            tags = dict(f.split(":", 1) for f in fields if ":" in f)
            current = tags.pop("section")
            bodies[current], meta[current] = [], tags
            continue
        if current:
            bodies[current].append(line)
    default = {"mode": header_mode, "date": header_run.group(1) if header_run else "?",
               "commit": header_run.group(2) if header_run else "?"}
    return {name: Section("".join(lines).rstrip() + "\n", **{**default, **meta[name]})
            for name, lines in bodies.items()}


def _write(target: pathlib.Path, sections: dict[str, Section]) -> None:
    """BENCHMARKS.md with a header that says which run made each section: sections regenerated
    with ``--only`` keep the mode, date and commit of the run that made them."""
    names = [name for name in SECTIONS if name in sections]
    rows = "".join(f"| {n} | {sections[n].mode} | {sections[n].date} | {sections[n].commit} |\n" for n in names)
    header = (
        "# Benchmarks\n\n"
        "Each section is regenerated by `python scripts/benchmark.py [--quick] --only NAME` (all sections: "
        "`make bench` / `make bench-quick`); sections can come from different runs, so each is listed with "
        "the mode, date and commit of its own run:\n\n"
        "| section | mode | date | commit |\n| --- | --- | --- | --- |\n" + rows + "\n"
        f"Machine: {machine()}.\n\n"
        "Every figure below was measured by the script named in its section; none is typed by hand.\n\n"
    )
    target.write_text(header + "\n".join(sections[n].marker(n) + sections[n].body for n in names))


if __name__ == "__main__":
    main()
