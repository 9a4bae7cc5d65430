"""Fault matrix: kill medal's long commands at random moments, run them again, and check that they end
exactly as if they had never been stopped.

For each command (`cache-teacher`, `distill --alpha 1`, `distill` from a teacher cache, `sweep --jobs 2`,
`import-dataset`, and `distill` under `torchrun --nproc-per-node 2` on CPU with gloo; see
fault_commands.py for the exact command lines and their tiny generated inputs):

1. one uninterrupted run, timed: the reference;
2. K trials. A trial starts the same command in the same (emptied) folder, sends it a signal at a
   moment drawn uniformly over the reference's wall time (`random.Random(f"{seed}:{command}")`),
   and, unless the command had already done its work, runs it again to the end. Its outputs are
   then compared with the reference's (fault_compare.py says what is compared, and how). A command
   that finishes before its moment (machine load varies) is started again with a moment drawn over
   the wall time it just took, at most twice (the JSON counts these redraws).

SIGKILL goes to every process of the command (it and all it started: sweep's distill children,
torchrun's ranks; see fault_processes.py), all stopped first and then killed, as when a job or a
machine dies. SIGTERM goes to the process a user started, as `kill PID` or a scheduler's time
limit sends it; commands that handle it (distill, sweep, torchrun) get SIGKILL and SIGTERM in
turn, the others SIGKILL alone. One kill per trial, then one clean rerun.

One row per command:
- kills: trials, by signal;
- done before the kill: the command had finished (after two redraws) or its outputs were complete
  when it was killed; nothing to rerun, its outputs are compared all the same;
- identical: trials whose final outputs equal the reference's;
- progress saved: kills after which the command had kept partial work (a checkpoint, finished cache
  chunks, finished sweep points), and of those, resumed: reruns whose log says they went on from it
  instead of starting over (n/a where a command keeps no partial work by design);
- problems: anything else wrong: a rerun that failed, a command that did not stop on SIGTERM or left
  processes running, saved progress a rerun ignored, files (partial folders, claims, temporary
  files) left behind that an uninterrupted run does not leave.

    python benchmarks/fault_matrix.py --k 10 --seed 0 [--commands distill-ce sweep ...] [--out DIR]

prints the table (markdown) and writes DIR/fault_matrix.json (every trial); exit code 1 when any
trial was not identical or had a problem. Linux only (/proc). Every process runs with
OMP_NUM_THREADS=1: bit-identical CPU results need the same thread count in both runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fault_commands import BY_NAME, COMMANDS, FaultCommand, Inputs, make_inputs
from fault_compare import differences, leftovers
from fault_processes import Started

REPO = Path(__file__).resolve().parents[1]
STOP_S = 120.0  # a command given SIGTERM must have exited by then
GRACE_S = 30.0  # ... and every process it started this much later
POLL_S = 0.05
REDRAWS = 2  # kill moments drawn again when the command finished before its moment


@dataclass
class Trial:
    index: int
    signal: str
    kill_at_s: float
    redrawn: int = 0  # moments that came after the command had finished, drawn again
    done_before_kill: bool = False
    exit_code: int | None = None  # of the interrupted (or finished) first process
    saved_progress: bool | None = None
    rerun_exit_code: int | None = None
    rerun_s: float | None = None
    resumed: bool | None = None
    identical: bool = False
    differences: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDAL_TENSORBOARD", "MEDAL_CACHE_DIR", "MEDAL_DATA_DIR")}
    path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # the medal of this checkout
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def run_to_end(command: FaultCommand, argv: list[str], env: dict[str, str], log: Path, live: Path,
               timeout: float, problems: list[str]) -> tuple[int, str, float]:
    """(exit code, its log plus what its children logged, seconds): the command run to its end.

    Children's logs (sweep's `.NAME.log`, deleted when a point succeeds) are read while they exist."""
    begin = time.monotonic()
    run = Started(argv, env, log, live.parent)
    seen: dict[str, str] = {}
    try:
        while run.popen.poll() is None:
            if time.monotonic() - begin > timeout:
                problems.append(f"rerun still running after {timeout:.0f}s")
                break
            if command.child_logs:
                for path in live.glob(command.child_logs):
                    try:
                        text = path.read_text(errors="replace")
                    except FileNotFoundError:
                        continue
                    if len(text) >= len(seen.get(path.name, "")):
                        seen[path.name] = text
            time.sleep(POLL_S)
    finally:
        if run.popen.poll() is None:
            run.kill_all()
    seconds = time.monotonic() - begin
    run.settle(GRACE_S, problems, "the rerun")
    return run.popen.returncode, log.read_text(errors="replace") + "".join(seen.values()), seconds


def tail(log: Path, lines: int = 3) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def reference_run(command: FaultCommand, inputs: Inputs, folder: Path, env: dict[str, str]) -> tuple[Path, float]:
    """The uninterrupted run, moved to `folder/reference` once finished; returns it and its wall time."""
    live, log = folder / "live", folder / "reference.log"
    live.mkdir(parents=True)
    begin = time.monotonic()
    run = Started(command.argv(inputs, live), env, log, folder)
    try:
        code = run.popen.wait()
    finally:
        if run.popen.poll() is None:
            run.kill_all()
    seconds = time.monotonic() - begin
    if code != 0:
        raise SystemExit(f"error: the uninterrupted {command.name} failed (exit {code}): {tail(log)} (log {log})")
    problems: list[str] = []
    run.settle(GRACE_S, problems, "the reference run")
    if problems:
        raise SystemExit(f"error: the uninterrupted {command.name}: {problems[0]}")
    return live.rename(folder / "reference"), seconds


def trial(command: FaultCommand, inputs: Inputs, folder: Path, env: dict[str, str], reference: Path,
          index: int, sig: signal.Signals, rng: random.Random, duration: float, timeout: float) -> Trial:
    """One kill at a moment drawn over `duration`, then one clean rerun unless the work was already done;
    compared with `reference`. A command that finishes before its moment runs again, its moment drawn
    anew over the wall time it just took (at most REDRAWS times)."""
    result = Trial(index, sig.name, 0.0)
    live, log = folder / "live", folder / f"trial{index}.log"
    for attempt in range(REDRAWS + 1):
        at = rng.uniform(0.0, duration)
        result.kill_at_s = round(at, 2)
        live.mkdir()
        begin = time.monotonic()
        first = Started(command.argv(inputs, live), env, log, folder)
        try:
            result.exit_code = first.popen.wait(timeout=at)
        except subprocess.TimeoutExpired:
            result.exit_code = first.interrupt(sig, STOP_S, GRACE_S, result.problems)
            result.done_before_kill = command.complete(live)
            break
        finally:
            if first.popen.poll() is None:
                first.kill_all()
        duration = time.monotonic() - begin
        first.settle(GRACE_S, result.problems, "the command")
        if result.exit_code != 0:
            result.problems.append(f"exit {result.exit_code} before any kill: {tail(log)}")
        if attempt == REDRAWS or result.problems:
            result.done_before_kill = True
            break
        result.redrawn += 1
        shutil.rmtree(live)
    if not result.done_before_kill:
        result.saved_progress = command.saved(live) if command.saved else None
        log = folder / f"trial{index}-rerun.log"
        code, text, seconds = run_to_end(command, command.argv(inputs, live), env, log, live, timeout, result.problems)
        result.rerun_exit_code, result.rerun_s = code, round(seconds, 2)
        if code != 0:
            result.problems.append(f"rerun exit {code}: {tail(log)}")
        if command.resumed:
            result.resumed = command.resumed(text)
            if result.saved_progress and not result.resumed:
                result.problems.append("progress was saved, yet the rerun started over")
    result.differences = differences(reference, live)
    result.identical = not result.differences
    result.leftovers = leftovers(reference, live)
    result.problems += [f"left behind: {path}" for path in result.leftovers]
    if result.identical and not result.problems:
        shutil.rmtree(live)
    else:
        live.rename(folder / f"trial{index}")  # kept for a look
    return result


def run_command(command: FaultCommand, inputs: Inputs, folder: Path, env: dict[str, str], k: int, seed: int) -> dict:
    """The command's row: its reference, K trials and their summary."""
    why = command.unavailable()
    if why:
        return {"command": command.name, "label": command.label, "skipped": why}
    folder.mkdir(parents=True)
    reference, duration = reference_run(command, inputs, folder, env)
    rng = random.Random(f"{seed}:{command.name}")
    trials = []
    for i in range(k):
        sig = command.signals[i % len(command.signals)]
        t = trial(command, inputs, folder, env, reference, i, sig, rng, duration, timeout=max(600.0, 20 * duration))
        trials.append(t)
        state = ("done before the kill" if t.done_before_kill else
                 f"progress {'saved' if t.saved_progress else 'none' if t.saved_progress is False else 'n/a'}, "
                 f"rerun {'resumed' if t.resumed else 'started over' if t.resumed is False else 'ran'}")
        print(f"{command.name}: trial {i + 1}/{k}: {t.signal} at {t.kill_at_s:.1f}s ({t.redrawn} redrawn): {state}, "
              f"{'identical' if t.identical else 'DIFFERENT'}" + (f"; {'; '.join(t.problems)}" if t.problems else ""),
              file=sys.stderr, flush=True)
    saved = sum(bool(t.saved_progress) for t in trials) if command.saved else None
    return {
        "command": command.name,
        "label": command.label,
        "argv": command.argv(inputs, folder / "live"),
        "reference_s": round(duration, 2),
        "kills": k,
        "signals": {s.name: sum(t.signal == s.name for t in trials) for s in command.signals},
        "done_before_kill": sum(t.done_before_kill for t in trials),
        "redrawn": sum(t.redrawn for t in trials),
        "identical": sum(t.identical for t in trials),
        "saved_progress": saved,
        "resumed": sum(bool(t.resumed) for t in trials) if command.resumed else None,
        "problems": [f"trial {t.index + 1}: {p}" for t in trials for p in t.problems],
        "trials": [asdict(t) for t in trials],
    }


def table(rows: list[dict]) -> str:
    header = ("| command | kills (SIGKILL + SIGTERM) | done before the kill | identical | progress saved at the kill "
              "| resumed, not restarted | uninterrupted run | problems |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped']} | | | | | | |")
            continue
        signals = row["signals"]
        kills = f"{row['kills']} ({signals.get('SIGKILL', 0)} + {signals.get('SIGTERM', 0)})"
        killed = row["kills"] - row["done_before_kill"]
        saved = "n/a" if row["saved_progress"] is None else f"{row['saved_progress']} of {killed}"
        resumed = ("n/a: keeps no partial work, a rerun starts over" if row["resumed"] is None
                   else f"{row['resumed']} of {row['saved_progress']}")
        problems = row["problems"]
        shown = "none" if not problems else "; ".join(problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
        lines.append(f"| {row['label']} | {kills} | {row['done_before_kill']} | {row['identical']} of {row['kills']} "
                     f"| {saved} | {resumed} | {row['reference_s']:.1f} s | {shown} |")
    return "\n".join(lines)


def clean(row: dict) -> bool:
    return "skipped" in row or (row["identical"] == row["kills"] and not row["problems"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10, help="kills per command (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--commands", nargs="+", default=[c.name for c in COMMANDS],
                    help=f"which commands (default all): {', '.join(BY_NAME)}")
    ap.add_argument("--out", type=Path, help="work folder, new or empty (default: a new temporary folder); "
                                             "fault_matrix.json, logs and the references are left there")
    args = ap.parse_args(argv)
    args.commands = [name for part in args.commands for name in part.split(",") if name]
    unknown = [name for name in args.commands if name not in BY_NAME]
    if unknown:
        ap.error(f"unknown command(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if args.k < 1:
        ap.error("--k must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out and args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: --out {args.out} is not empty; pass a new or empty folder.")
    work = (args.out or Path(tempfile.mkdtemp(prefix="medal-fault-matrix-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = child_env()
    began = time.monotonic()
    print(f"fault matrix in {work}: making the inputs", file=sys.stderr, flush=True)
    inputs = make_inputs(work / "inputs", env, {need for name in args.commands for need in BY_NAME[name].needs})
    rows = [run_command(BY_NAME[name], inputs, work / name, env, args.k, args.seed) for name in args.commands]
    report = {
        "k": args.k, "seed": args.seed, "command_line": " ".join(sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "wall_s": round(time.monotonic() - began, 1), "rows": rows,
    }
    (work / "fault_matrix.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"\n{work / 'fault_matrix.json'}; wall time {report['wall_s']:.0f} s", file=sys.stderr)
    return 0 if all(map(clean, rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
