"""The ``fastrnn`` command: ``info`` (the default), ``bench`` and ``compile``."""

import argparse
import os
import platform
import sys
import textwrap


def _gpu_line():
    try:
        import cupy
    except ImportError:
        return "none seen (CuPy is not installed)"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name}, compute capability {props['major']}.{props['minor']}"
    except Exception as exc:  # CUDA's own error types, when there is no usable device
        return f"none usable ({exc})"


def info_lines():
    """Versions, backends (and why any is unavailable) and thread settings, as text lines."""
    import numpy as np

    from . import __version__, backends, get_backend

    lines = [f"fastrnn {__version__}", f"python {platform.python_version()} "
             f"({platform.machine()}, {os.cpu_count()} CPUs)", f"numpy {np.__version__}"]
    from importlib import metadata
    for mod, dist in (("numba", ("numba",)), ("cupy", ("cupy", "cupy-cuda13x", "cupy-cuda12x")),
                      ("torch", ("torch",)), ("onnx", ("onnx",)),
                      ("onnxruntime", ("onnxruntime",)), ("openvino", ("openvino",))):
        # (installed versions without importing the packages: torch alone takes seconds)
        versions = []
        for name in dist:
            try:
                versions.append(metadata.version(name))
            except metadata.PackageNotFoundError:
                pass
        lines.append(f"{mod} {versions[0]}" if versions else f"{mod} not installed")
    from ._blas_info import describe
    lines.append(describe())
    auto = ("cpu" if backends()["cpu"]["available"] else
            "numpy (the reference: the cpu backend cannot run here)")
    lines.append(f"selected backend: {get_backend()} (auto runs NumPy arrays on {auto})")
    for name, rep in backends().items():
        state = "available" if rep["available"] else f"unavailable: {rep['reason']}"
        lines.append(f"  {name:6s} ({rep['array_module']} arrays) {state}")
    from .kernels.cells import CELLS
    lines.append("cells (every backend): " + ", ".join(
        f"{name} ({spec.family.upper() if spec.family != 'rnn' else 'RNN'}"
        + (", reset_after=False" if spec.reset_before else "")
        + (", peepholes=True" if spec.peepholes else "") + ")"
        for name, spec in CELLS.items()))
    lines.append("layer options (every backend): LSTM(proj_size=P) with either LSTM cell, as "
                 "torch.nn.LSTM's")
    lines.append("layer options (every backend, and fastrnn.torch): layer_norm=True (every "
                 "cell but the GRU with reset_after=False), zoneout=p")
    lines.append("quantized inference (numpy and cpu backends, fastrnn.quantize and "
                 "fastrnn.torch.quantize): int8, bfloat16")
    if backends()["cpu"]["available"]:
        from .kernels import cpu
        try:
            cpus = cpu.pinned_cpus()
            pins = f"pinned to CPUs {','.join(map(str, cpus))}" if cpus else "not pinned"
        except ValueError as err:  # a bad FASTRNN_PIN_THREADS: say so, as calls will
            pins = f"pinning: {err}"
        lines.append(f"cpu backend: {cpu.num_threads()} threads (NUMBA_NUM_THREADS), {pins}, "
                     f"compiled-kernel cache: {cpu.cache_dir() or 'none (not writable)'}")
        done = cpu.compiled_kernels()
        if done is not None:
            lines.append("cpu backend: compiled loops (every cell): " + "; ".join(
                f"{loop} {', '.join(dtypes) or 'not yet'}" for loop, dtypes in done.items())
                + " (`fastrnn compile` compiles them all ahead of time)")
        settings = cpu.wait_settings()
        wait = (", ".join(f"{k}={v}" for k, v in settings.items()) + " (set by fastrnn)"
                if settings else
                "the user's OMP_WAIT_POLICY/GOMP_SPINCOUNT (or the runtime's defaults)")
        lines.append(f"cpu backend: idle workers wait as {wait}")
        lines.append(f"cpu backend: L2 cache {cpu.L2_BYTES // 1024} KiB a core (sizes where "
                     "the batch 1-2 loops compute the input projection)")
        try:
            cache = cpu.cache_info()
            lines.append(f"cpu backend: array cache {cache['idle_bytes'] / 2**20:.1f} MiB idle "
                         f"in {cache['idle_blocks']} blocks, limit "
                         f"{cache['limit_bytes'] / 2**20:.0f} MiB (FASTRNN_CACHE_LIMIT; "
                         "fastrnn.empty_cache() frees it)")
        except ValueError as err:  # a bad FASTRNN_CACHE_LIMIT: say so, as calls will
            lines.append(f"cpu backend: array cache: {err}")
    lines.append(f"gpu: {_gpu_line()}")
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                "FASTRNN_BACKEND", "FASTRNN_PIN_THREADS", "FASTRNN_CACHE_LIMIT"):
        lines.append(f"{var}={os.environ.get(var, '(unset)')}")
    return lines


def _writable(option, path):
    """Fail before any timing if an output path cannot be written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise SystemExit(f"fastrnn bench: {option} {path}: cannot write there (the folder "
                         "must exist and be writable, and the path must not be a folder)")


def bench_main(args):
    from . import _bench_report as report
    from . import bench

    for option in ("json", "markdown", "plot"):
        _writable("--" + option, getattr(args, option))
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("fastrnn bench: --plot needs matplotlib "
                             "(pip install fastrnn[bench])") from None
    try:
        configs = bench.select(args.suite, args.only.split(",") if args.only else None,
                               quick=args.quick)
        names = bench.contenders(args.suite, args.backend.split(",") if args.backend else None,
                                 peer=not args.no_peer)
        results = []
        for threads in bench.thread_counts(args.threads):  # one run per count: a sweep
            results += bench.run(configs, names, rounds=args.rounds, reps=args.reps,
                                 reference_reps=args.reference_reps, threads=threads,
                                 quick=args.quick)
    except bench.BenchmarkError as exc:
        raise SystemExit(f"fastrnn bench: {exc}") from None
    print(report.table(results))
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json(results))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(results))
    if args.plot:
        report.plot(results, args.plot, suite=args.suite)
    return 0


def compile_main(args):
    from . import _compile, backends

    if not backends()["cpu"]["available"]:
        raise SystemExit(f"fastrnn compile: the cpu backend is unavailable here: "
                         f"{backends()['cpu']['reason']}")
    if args.all and args.dtypes:
        raise SystemExit("fastrnn compile: --all compiles every dtype; give --all or --dtypes, "
                         "not both")
    dtypes = args.dtypes.split(",") if args.dtypes else list(_compile.DTYPES)
    unknown = [d for d in dtypes if d not in _compile.DTYPES]
    if unknown:
        raise SystemExit(f"fastrnn compile: --dtypes: expected names from "
                         f"{', '.join(_compile.DTYPES)}, got {', '.join(unknown)}")
    if args.jobs is not None and args.jobs < 1:
        raise SystemExit(f"fastrnn compile: --jobs: expected at least 1, got {args.jobs}")
    jobs = args.jobs or _compile.default_jobs()
    from .kernels import cpu
    print(f"compiling the cpu kernels of every cell in {', '.join(dtypes)} with up to "
          f"{jobs} processes into {cpu.cache_dir()}", file=sys.stderr)
    seconds = _compile.compile_kernels(dtypes, jobs)
    print(f"compiled every loop kind in {', '.join(dtypes)} in {seconds:.0f} s")
    return 0


def _configurations():
    """The benchmark configurations and their shapes, for ``fastrnn bench --help``."""
    from . import bench
    lines = []
    for suite, configs in bench.SUITES.items():
        for c in configs.values():
            dirs = " bidirectional" if c.D == 2 else ""
            mode = "training" if c.mode == "train" else "inference"
            what = f"{c.cell} cell {c.H}" if c.loop else f"{c.cell} {c.L}x{c.H}{dirs}"
            what += " layer_norm" if c.layer_norm else ""
            steps = "steps in a Python loop" if c.loop else "steps"
            lines.append(f"  {c.name:<4} {suite}: {what}, input {c.I}, "
                         f"batch {c.B}, {c.T} {steps}, {mode}"
                         + (" (--quick)" if c.name in bench.QUICK[suite] else ""))
    return "\n".join(lines)


def main(argv=None):
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="fastrnn", description="fastrnn: fast RNN, LSTM and GRU layers for NumPy, CuPy "
        "and PyTorch. Without a command, `fastrnn` runs `fastrnn info`.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,compile}")
    sub.add_parser("info", help="versions, backends and why any is unavailable, threads, the "
                   "compiled-kernel cache (the default command)")
    b = sub.add_parser(
        "bench", help="time every backend against the reference and the peer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time every backend against the NumPy reference and the peers (PyTorch, "
        "ONNX Runtime, OpenVINO), each contender in its own process, after checking that "
        "it agrees with the reference.",
        epilog="configurations:\n" + _configurations() + "\n\n" + textwrap.fill(
            "In the report, 'vs ref' and 'vs peer' are the reference's and the fastest "
            "peer's median time over the contender's (above 1: the contender is faster); "
            "'x floor' is the contender's median over the floor, the time of its FLOPs at "
            "the measured GEMM rate.", 79))
    b.add_argument("--suite", default="cpu",
                   help="cpu (default), cells (cells called step by step) or gpu")
    b.add_argument("--only", help="comma-separated configuration names, e.g. C1,C3")
    b.add_argument("--backend", help="comma-separated fastrnn backends to time (default: "
                   "every available one for the suite; the reference always runs)")
    b.add_argument("--quick", action="store_true",
                   help="a short run: C1, C2, C5 and C8 (G1, G3, G3i, G6 on the gpu "
                   "suite) at their full shapes, at most 2 rounds of 2 calls")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    b.add_argument("--reps", type=int, default=3, help="timed calls per turn (default 3)")
    b.add_argument("--reference-reps", type=int, default=1,
                   help="timed calls per turn of the slow NumPy reference (default 1)")
    b.add_argument("--threads", help="threads for every contender (default: all); a "
                   "comma-separated list, e.g. 1,2,4, runs the suite once per count")
    b.add_argument("--no-peer", action="store_true",
                   help="do not time the peers (PyTorch, ONNX Runtime, OpenVINO)")
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--markdown", help="write a markdown table here")
    b.add_argument("--plot", help="write a PNG chart of speedups here (needs matplotlib)")
    c = sub.add_parser("compile", help="compile the cpu kernels ahead of time into the "
                       "on-disk cache, so that first calls load them instead")
    c.add_argument("--all", action="store_true",
                   help="float32, float64 and the quantized formats int8 and bfloat16 (the "
                   "default); every cell runs in the same compiled loops")
    c.add_argument("--dtypes", help="some of float32, float64, int8, bfloat16 "
                   "(fastrnn.quantize's formats), comma-separated (default: all)")
    c.add_argument("--jobs", type=int, help="processes compiling at once, one dtype each "
                   "(default: one per usable CPU)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_main(args)
    if args.command == "compile":
        return compile_main(args)
    print("\n".join(info_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
