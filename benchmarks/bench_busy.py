"""Recovery on a quiet machine and next to one CPU-bound program: times and their ratio.

Runs the same held-out recovery twice per path, each in a fresh process: once alone ("idle") and
once while one other CPU-bound process runs (started before, stopped after, and bounded in time
by itself). Paths: ``cli`` (``python -m napari_trihrge.workflows.cli recovery``) and ``napari`` (a headless
viewer under Xvfb, the Train panel's worker, the event loop turning; the number of event-loop
turns shows it stayed live). Features are cached by a warm-up run first, so both runs time the
same work. Prints wall time, training time, CPU time and the machine's load average per run.

    python benchmarks/bench_busy.py --quick            # synthetic sample, few epochs (minutes)
    python benchmarks/bench_busy.py                    # dlpfc_151673, the default schedule
    python benchmarks/bench_busy.py --src /path/to/other/checkout/src   # e.g. older code

The napari path needs an X server: under ``xvfb-run`` or with ``DISPLAY`` set; without one the
script starts ``Xvfb`` itself when it is installed, else skips that path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, print_table

BUSY_CODE = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


# ------------------------------------------------------------------------------------------
# child processes: one recovery each
# ------------------------------------------------------------------------------------------
def _child_napari(args) -> None:
    """One recovery through the Train panel's worker in a headless viewer; prints JSON."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_trihrge import io
    from napari_trihrge.napari._qt import TrainWidget

    adata = _load(args.sample, io)
    viewer = napari.Viewer(show=False)
    tw = TrainWidget(viewer)
    tw.session.set_sample(adata)
    tw.set_task("recovery")
    tw.genes_spin.setValue(args.genes)
    if args.max_epochs:
        tw.epochs_spin.setValue(args.max_epochs)
    tw.out_edit.setText(str(args.out))
    tw.session.device = lambda: "cpu"
    panel_config = tw.make_config  # the panel's settings, with this benchmark's feature cache
    tw.make_config = lambda: dataclasses.replace(panel_config(), cache_dir=str(args.cache_dir))
    ticks = [0]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start(20)
    app = QApplication.instance()
    t0 = time.perf_counter()
    if tw.start() is None:
        raise SystemExit("the Train panel did not start")
    while tw.running:
        app.processEvents()
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    timer.stop()
    outcome = tw.last_outcome
    if outcome.status != "ok":
        raise SystemExit(f"run failed: {outcome.message}")
    result = outcome.result.result  # a workflows.runs.RunOutput
    print(json.dumps({"wall_s": wall, "training_s": result.timings_s.get("training"),
                      "pcc_mean": result.metrics.get("pcc_mean"),
                      "ticks_per_s": ticks[0] / max(wall, 1e-9)}))
    viewer.close()


def _load(sample: str, io):
    if sample == "synthetic":
        from napari_trihrge.datasets import synthetic_sample

        return synthetic_sample(seed=0)
    return io.read(sample)


# ------------------------------------------------------------------------------------------
# parent: orchestration
# ------------------------------------------------------------------------------------------
def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _cli_command(args, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "napari_trihrge.workflows.cli", "recovery", args.sample_path, "--out",
           str(out), "--genes", str(args.genes), "--cache-dir", str(args.cache_dir), "--quiet",
           "--device", "cpu"]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    return cmd


def _napari_command(args, out: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--child", "napari", "--out", str(out),
           "--genes", str(args.genes), "--cache-dir", str(args.cache_dir),
           "--child-sample", args.sample_path]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    return cmd


def _run_once(path: str, args, tmp: Path, label: str) -> dict:
    out = tmp / f"{path}-{label}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _cli_command(args, out) if path == "cli" else _napari_command(args, out)
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_env(args.src), capture_output=True, text=True,
                              timeout=args.run_timeout_s)
    except subprocess.TimeoutExpired:
        return {"wall_s": float("nan"), "note": f"stopped after {args.run_timeout_s} s",
                "load_before": load_before, "load_after": os.getloadavg()[0]}
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {"wall_s": wall, "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
           "load_before": load_before, "load_after": os.getloadavg()[0]}
    if proc.returncode != 0:
        row["note"] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
        return row
    if path == "cli":
        summary = json.loads((out / "summary.json").read_text())
        row["training_s"] = summary["timings_s"].get("training")
        row["pcc_mean"] = (summary.get("recovery") or {}).get("pcc_mean")
    else:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update({k: info[k] for k in ("training_s", "pcc_mean", "ticks_per_s")})
        row["wall_s"] = info["wall_s"]  # the run itself, without starting Qt and napari
    return row


class Busy:
    """One CPU-bound process for the duration of a ``with`` block (and never longer than
    ``limit_s``: it stops itself)."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_CODE.format(s=self.limit_s)])
        time.sleep(2.0)  # running at full speed before the measured run starts
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _display_for_napari() -> subprocess.Popen | None | bool:
    """Ensure an X display: None when one exists, the started Xvfb, or False (none possible)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return False
    display = f":{90 + os.getpid() % 400}"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    os.environ["DISPLAY"] = display
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="synthetic sample, 100 genes, 8 epochs (minutes instead of tens)")
    p.add_argument("--sample", default=None, help="sample path (default: dlpfc_151673 from "
                   "the shared data; with --quick the embedded synthetic sample)")
    p.add_argument("--paths", default="cli,napari", help="comma-separated: cli, napari")
    p.add_argument("--genes", type=int, default=None, help="genes (default 1000; --quick 100)")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch bound (default: the "
                   "engine's; --quick 8)")
    p.add_argument("--src", default=None, help="a checkout's src folder to run instead of the "
                   "installed package (put first on PYTHONPATH of every run)")
    p.add_argument("--run-timeout-s", type=float, default=900.0,
                   help="stop a single run after this many seconds (default 900)")
    # internal: a child run of the napari path
    p.add_argument("--child", choices=["napari"], help=argparse.SUPPRESS)
    p.add_argument("--child-sample", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child == "napari":
        args.sample = args.child_sample
        _child_napari(args)
        return 0

    if args.genes is None:
        args.genes = 100 if args.quick else 1000
    if args.max_epochs is None and args.quick:
        args.max_epochs = 8
    if args.sample is None:
        args.sample = "synthetic" if args.quick else str(SHARED_DATA / "dlpfc_151673")
    tmp = Path(tempfile.mkdtemp(prefix="trihrge-bench-busy-"))
    args.cache_dir = tmp / "cache"
    if args.sample == "synthetic":  # the CLI reads files: write the embedded sample once
        from napari_trihrge.datasets import synthetic_sample

        args.sample_path = str(tmp / "synthetic.h5ad")
        synthetic_sample(seed=0).write_h5ad(args.sample_path)
    else:
        if not Path(args.sample).exists():
            print(f"sample {args.sample} not found; pass --sample PATH or --quick",
                  file=sys.stderr)
            return 2
        args.sample_path = args.sample

    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    xvfb = None
    if "napari" in paths:
        xvfb = _display_for_napari()
        if xvfb is False:
            print("no X display and no Xvfb: skipping the napari path", file=sys.stderr)
            paths.remove("napari")
    rows = []
    try:
        print(f"sample {args.sample}, {args.genes} genes, epochs "
              f"{args.max_epochs or 'default'}, code from "
              f"{args.src or os.environ.get('PYTHONPATH') or 'the installed package'}, "
              f"{os.cpu_count()} CPUs", flush=True)
        warm = _run_once("cli", args, tmp, "warm-up")  # fills the feature cache
        print(f"warm-up (feature cache): {warm.get('wall_s', float('nan')):.1f} s "
              f"{warm.get('note', '')}", flush=True)
        for path in paths:
            idle = _run_once(path, args, tmp, "idle")
            print(f"{path} idle: {idle}", flush=True)
            with Busy(limit_s=args.run_timeout_s + 30):
                busy = _run_once(path, args, tmp, "busy")
            print(f"{path} busy: {busy}", flush=True)
            ratio = busy["wall_s"] / idle["wall_s"]
            t_ratio = ((busy.get("training_s") or float("nan"))
                       / (idle.get("training_s") or float("nan")))
            for label, r in (("idle", idle), ("next to 1 busy process", busy)):
                rows.append({
                    "path": path, "run": label, "wall s": f"{r['wall_s']:.1f}",
                    "training s": f"{r.get('training_s') or float('nan'):.1f}",
                    "CPU s": f"{r.get('cpu_s', float('nan')):.1f}",
                    "load 1 min (before/after)": f"{r['load_before']:.1f}/{r['load_after']:.1f}",
                    "PCC": f"{r.get('pcc_mean') or float('nan'):.3f}",
                    "GUI ticks/s": (f"{r['ticks_per_s']:.0f}" if "ticks_per_s" in r else ""),
                    "busy/idle (wall, training)": (f"{ratio:.2f}, {t_ratio:.2f}"
                                                   if r is busy else ""),
                    "note": r.get("note", ""),
                })
    finally:
        if xvfb:
            xvfb.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
