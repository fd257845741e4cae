"""Reports of a benchmark run: a readable table, markdown, JSON and a PNG chart."""

import json
import os
import platform

import numpy as np


def environment(results):
    """Machine and versions, for the reports."""
    import fastrnn
    env = {"fastrnn": fastrnn.__version__, "python": platform.python_version(),
           "numpy": np.__version__, "machine": platform.machine(),
           "processor": _cpu_name(), "cpus": os.cpu_count()}
    for mod in ("numba", "torch", "cupy", "onnxruntime", "openvino"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from ._blas_info import blas
    env["blas"] = blas()
    if results:
        env["gemm_rate"] = results[0]["gemm_rate"]
        env["threads"] = results[0]["threads"]
    return env


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def rows(results):
    """One flat row per configuration and contender."""
    out = []
    for res in results:
        c = res["config"]
        shape = (f"{c['cell']} I={c['I']} H={c['H']} L={c['L']} D={c['D']} B={c['B']} "
                 f"T={c['T']} {c['mode']}")
        for name, r in res["contenders"].items():
            out.append({"config": c["name"], "shape": shape, "contender": name,
                        "threads": res["threads"],
                        "median_ms": r["median_s"] * 1e3, "min_ms": r["min_s"] * 1e3,
                        "max_ms": r["max_s"] * 1e3, "runs": r["runs"],
                        "vs_reference": r["speedup_vs_reference"],
                        "vs_peer": r["speedup_vs_peer"], "times_floor": r["times_floor"],
                        "floor_ms": res["floor_s"] * 1e3, "error": r.get("error")})
    return out


def _fmt_error(e):
    return "-" if e is None else f"{e:.1e}"


def table(results):
    """A plain-text table for the terminal."""
    head = (f"{'config':<6} {'thr':>3} {'contender':<17} {'median ms':>10} {'min':>9} "
            f"{'max':>9} {'vs ref':>8} {'vs peer':>8} {'x floor':>8} {'error':>8}")
    from ._blas_info import describe
    lines = [describe(), head, "-" * len(head)]
    for r in rows(results):
        lines.append(f"{r['config']:<6} {r['threads']:>3} {r['contender']:<17} "
                     f"{r['median_ms']:>10.3f} "
                     f"{r['min_ms']:>9.3f} {r['max_ms']:>9.3f} {_fmt_ratio(r['vs_reference']):>8}"
                     f" {_fmt_ratio(r['vs_peer']):>8} {r['times_floor']:>7.1f}x"
                     f" {_fmt_error(r['error']):>8}")
    lines.append("vs ref, vs peer: the reference's and the fastest peer's median over this "
                 "row's (above 1: faster); x floor: this row's median over the time of its "
                 "FLOPs at the measured GEMM rate; error: max abs difference from the "
                 "float32 reference over its max abs value (-int8, -bf16: quantized)")
    return "\n".join(lines)


def markdown(results):
    """A markdown table for BENCHMARKS.md, with the machine and versions above it."""
    env = environment(results)
    from ._blas_info import describe
    lines = ["Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()
                                     if k not in ("gemm_rate", "blas")), describe()]
    if "gemm_rate" in env:
        g = env["gemm_rate"]
        lines.append(f"GEMM rate for the floor: {g['flops_per_s'] / 1e9:.0f} GFLOP/s "
                     f"({g['what']})")
    lines += ["", "| config | shape | threads | contender | median ms | min | max | runs | "
              "vs reference | vs peer | floor ms | x floor | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows(results):
        lines.append(f"| {r['config']} | {r['shape']} | {r['threads']} | {r['contender']} | "
                     f"{r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['max_ms']:.3f} | "
                     f"{r['runs']} | {_fmt_ratio(r['vs_reference'])} | "
                     f"{_fmt_ratio(r['vs_peer'])} | {r['floor_ms']:.3f} | "
                     f"{r['times_floor']:.2f}x | {_fmt_error(r['error'])} |")
    return "\n".join(lines) + "\n"


def to_json(results):
    return json.dumps({"environment": environment(results), "results": results}, indent=2)


# One colour per contender, the same in every chart (matplotlib's tab10 palette); other
# names take the remaining colours in name order.
COLOURS = {
    "fastrnn-cpu": "#1f77b4", "fastrnn-torch": "#17becf", "fastrnn-gpu": "#2ca02c",
    "torch-cpu": "#d62728", "torch-cudnn": "#ff7f0e", "onnxruntime": "#9467bd",
    "openvino": "#8c564b",
}
_SPARE = ("#e377c2", "#7f7f7f", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a")


def colour(name, others=()):
    """The chart colour of contender ``name`` (``others``: every unknown name in the chart,
    which share the spare colours in name order)."""
    if name in COLOURS:
        return COLOURS[name]
    spare = sorted(n for n in set(others) | {name} if n not in COLOURS)
    return _SPARE[spare.index(name) % len(_SPARE)]


def plot(results, path, suite="cpu"):
    """A PNG bar chart of each contender's speedup over the NumPy reference, on a log2 axis
    labelled 1x, 2x, 4x, ..., titled with the machine and the suite."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    sweep = len({r["threads"] for r in results}) > 1
    configs = [r["config"]["name"] + (f"\n{r['threads']} thr" if sweep else "")
               for r in results]
    names = sorted({n for r in results for n in r["contenders"]} - {"fastrnn-numpy"})
    fig, ax = plt.subplots(figsize=(1.2 * len(configs) + 3, 4.5))
    width = 0.8 / max(len(names), 1)
    top = 1.0
    for k, name in enumerate(names):
        vals = [r["contenders"].get(name, {}).get("speedup_vs_reference") or 0
                for r in results]
        top = max([top] + vals)
        ax.bar(np.arange(len(configs)) + k * width, vals, width, label=name,
               color=colour(name, names))
    ax.set_xticks(np.arange(len(configs)) + width * (len(names) - 1) / 2, configs)
    ax.set_yscale("log", base=2)
    ticks = [2.0 ** k for k in range(-2, int(np.ceil(np.log2(top))) + 1)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticklabels([f"{t:g}x" for t in ticks])
    ax.set_ylim(0.25, ticks[-1] * 1.2)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_ylabel("speedup over the NumPy reference")
    env = environment(results)
    counts = sorted({r["threads"] for r in results})
    ax.set_title(f"fastrnn {suite} suite: {env['processor']}, "
                 f"{'/'.join(map(str, counts))} threads", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
