"""The benchmark runner: suites as data, argument errors, the agreement check, reports."""

import dataclasses
import json
import os

import numpy as np
import pytest

from fastrnn import _bench_report as report
from fastrnn import bench, cli


def test_suites_hold_the_issue_configurations():
    cpu, gpu = bench.SUITES["cpu"], bench.SUITES["gpu"]
    assert list(cpu) == [f"C{k}" for k in range(1, 9)] + ["C2i", "C4i", "C9", "C10"]
    assert cpu["C10"] == bench.Config("C10", "lstm", 512, 512, 1, 1, 32, 100, "train",
                                      layer_norm=True)
    assert cpu["C9"] == bench.Config("C9", "lstm", 650, 650, 2, 1, 20, 35, "train")
    assert cpu["C4i"] == bench.Config("C4i", "gru", 512, 512, 1, 1, 32, 100, "infer")
    assert cpu["C6"] == bench.Config("C6", "lstm", 123, 320, 2, 2, 32, 100, "train")
    assert cpu["C8"] == bench.Config("C8", "gru", 128, 128, 1, 1, 8, 500, "infer")
    assert list(gpu) == ["G1", "G2", "G3", "G3i", "G4", "G5", "G6", "G7", "G8"]
    assert gpu["G6"] == bench.Config("G6", "rnn_relu", 1760, 1760, 1, 1, 16, 50, "train")


def test_flops_count_both_products_and_backward():
    c = bench.Config("x", "gru", 10, 20, 2, 2, 3, 7, "infer")
    layer0 = 2 * 2 * 7 * 3 * 60 * (10 + 20)
    layer1 = 2 * 2 * 7 * 3 * 60 * (40 + 20)
    assert c.flops() == layer0 + layer1
    assert bench.Config("x", "gru", 10, 20, 2, 2, 3, 7, "train").flops() == 3 * c.flops()


def test_quick_keeps_the_shapes_and_takes_a_subset():
    quick = bench.select("cpu", quick=True)
    assert [c.name for c in quick] == ["C1", "C2", "C5", "C8"]
    assert all(c == bench.SUITES["cpu"][c.name] for c in quick)  # full shapes
    assert [c.name for c in bench.select("cpu", ["C3"], quick=True)] == ["C3"]
    assert len(bench.select("gpu", quick=True)) == 4


def test_bad_names_fail_before_timing():
    with pytest.raises(bench.BenchmarkError, match="--suite: expected one of"):
        bench.select("tpu")
    with pytest.raises(bench.BenchmarkError, match=r"unknown configuration\(s\) \['C11'\]"):
        bench.select("cpu", ["C1", "C11"])
    assert [c.name for c in bench.select("cpu", ["C3", "C1"])] == ["C1", "C3"]
    with pytest.raises(bench.BenchmarkError, match="--backend: expected names"):
        bench.contenders("cpu", ["fast"])


@pytest.mark.parametrize("option,value", [("rounds", 0), ("reps", -1), ("reference_reps", 0),
                                          ("threads", 0), ("rounds", 2.5)])
def test_counts_that_are_not_positive_integers_fail_before_timing(option, value):
    """(--rounds 0 used to end in a NumPy error about an empty reduction after the run;
    --threads 0 quietly meant all cores.)"""
    configs = bench.select("cpu", ["C1"])
    flag = "--" + option.replace("_", "-")
    with pytest.raises(bench.BenchmarkError,
                       match=f"{flag}: expected a positive integer, got {value}"):
        bench.run(configs, ["fastrnn-numpy"], **{option: value})
    if isinstance(value, int):  # (argparse itself refuses "2.5" for an int option)
        with pytest.raises(SystemExit, match=f"{flag}: expected a positive integer"):
            cli.main(["bench", "--only", "C1", flag, str(value)])


def test_unavailable_backend_is_refused_with_its_reason():
    import fastrnn
    rep = fastrnn.backends()["gpu"]
    if rep["available"]:
        pytest.skip("a GPU is available here")
    with pytest.raises(bench.BenchmarkError, match="--backend gpu: not available"):
        bench.contenders("gpu", ["gpu"])
    with pytest.raises(bench.BenchmarkError, match="--suite gpu: the gpu backend is not"):
        bench.contenders("gpu")


def test_agreement_check_names_configuration_contender_and_quantity():
    cfg = bench.SUITES["cpu"]["C2"]
    ref = {"output": np.ones((3, 2)), "grad:weight_hh_l0": np.ones(4)}
    good = {"output": np.ones((3, 2)) + 1e-5, "grad:weight_hh_l0": np.ones(4)}
    bench.check_agreement(cfg, {bench.REFERENCE: ref, "fastrnn-cpu": good})
    bad = {"output": np.ones((3, 2)), "grad:weight_hh_l0": np.ones(4) * 1.1}
    with pytest.raises(bench.BenchmarkError,
                       match="C2: fastrnn-cpu disagrees .* on grad:weight_hh_l0"):
        bench.check_agreement(cfg, {bench.REFERENCE: ref, "fastrnn-cpu": bad})
    nan = {"output": np.full((3, 2), np.nan)}
    with pytest.raises(bench.BenchmarkError, match="on output"):
        bench.check_agreement(cfg, {bench.REFERENCE: ref, "torch-cpu": nan})


def test_cli_refuses_unwritable_outputs_before_timing(tmp_path):
    with pytest.raises(SystemExit, match="--json .*cannot write there"):
        cli.main(["bench", "--json", str(tmp_path / "missing" / "x.json")])
    with pytest.raises(SystemExit, match="--markdown .*cannot write there"):
        cli.main(["bench", "--markdown", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown configuration"):
        cli.main(["bench", "--only", "C42"])


def test_a_tiny_run_checks_times_and_reports(tmp_path):
    cfg = bench.Config("tiny", "gru", 5, 6, 2, 2, 3, 4, "train")
    names = bench.contenders("cpu")
    results = bench.run([cfg], names, rounds=2, reps=2, stream=open(os.devnull, "w"),
                        gap_s=0)
    (res,) = results
    assert set(res["contenders"]) == {n for n in names if bench.applies(n, cfg)}
    assert "onnxruntime" not in res["contenders"]  # a training configuration
    for name, r in res["contenders"].items():
        assert r["runs"] == (2 if name == bench.REFERENCE else 4)
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert res["contenders"][bench.REFERENCE]["speedup_vs_reference"] == 1.0
    assert res["floor_s"] == cfg.flops() / res["gemm_rate"]["flops_per_s"]
    md = report.markdown(results)
    assert "| tiny |" in md and "GEMM rate for the floor" in md
    data = json.loads(report.to_json(results))
    assert data["results"][0]["config"]["name"] == "tiny"
    assert "tiny" in report.table(results)


@pytest.mark.parametrize("cell,mode", [("lstm", "train"), ("gru", "infer"),
                                       ("rnn_tanh", "train")])
def test_cell_loops_agree_with_the_reference_and_are_timed(cell, mode):
    """The cells suite: every contender's loop of steps (outputs, last states and, for
    training, the gradients through every step) agrees with the reference's before
    timing; the inference engines of whole layers are not contenders there."""
    cfg = bench.Config("tiny-loop", cell, 5, 6, 1, 1, 3, 4, mode, True)
    names = bench.contenders("cells")
    assert not set(names) & set(bench.INFERENCE_ENGINES)
    results = bench.run([cfg], names, rounds=1, reps=1, stream=open(os.devnull, "w"),
                        gap_s=0)
    timed = set(results[0]["contenders"])
    assert timed == set(names)
    assert {"fastrnn-cpu", "fastrnn-torch", "torch-cpu", bench.REFERENCE} <= timed


def test_layer_norm_lstm_agrees_with_a_pytorch_loop_and_is_timed():
    """C10's contenders: fastrnn's layer-normalised LSTM (reference and cpu) and the eager
    PyTorch loop of the same equations agree (outputs, states, every gradient, the gains'
    too) before timing; fastrnn.torch (no layer_norm) is not a contender there."""
    cfg = bench.Config("tiny-ln", "lstm", 5, 6, 1, 1, 3, 4, "train", layer_norm=True)
    names = bench.contenders("cpu")
    results = bench.run([cfg], names, rounds=1, reps=1, stream=open(os.devnull, "w"),
                        gap_s=0)
    timed = set(results[0]["contenders"])
    assert {"fastrnn-cpu", "torch-cpu", bench.REFERENCE} <= timed
    assert "fastrnn-torch" not in timed


def _benchmarks_conftest():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "conftest.py")
    spec = importlib.util.spec_from_file_location("fastrnn_benchmarks_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pytest_benchmark_files_time_only_what_agrees_with_the_reference():
    conftest = _benchmarks_conftest()
    cfg = bench.Config("tiny", "lstm", 5, 6, 1, 1, 3, 4, "train")
    weights = bench._weights(cfg)
    run, outputs, _ = conftest.build_contender("fastrnn-cpu", dataclasses.asdict(cfg), weights, 1)
    run()
    got = outputs()
    conftest.check_against_reference(cfg, "fastrnn-cpu", weights, got)  # agrees
    key = next(k for k in got if k.startswith("grad:"))
    wrong = dict(got, **{key: got[key] * 1.05 + 1e-3})
    with pytest.raises(bench.BenchmarkError, match=f"tiny: fastrnn-cpu disagrees .* {key}"):
        conftest.check_against_reference(cfg, "fastrnn-cpu", weights, wrong)


def test_plot_axis_title_and_colours(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def result(name, speedups):
        contenders = {n: {"speedup_vs_reference": s} for n, s in speedups.items()}
        contenders[bench.REFERENCE] = {"speedup_vs_reference": 1.0}
        return {"config": {"name": name}, "contenders": contenders, "threads": 2,
                "gemm_rate": {"flops_per_s": 1e11, "what": "test"}}

    results = [result("C1", {"fastrnn-cpu": 5.0, "torch-cpu": 3.0, "mine": 1.5}),
               result("C2", {"fastrnn-cpu": 9.0, "torch-cpu": 2.0, "mine": 0.7})]
    seen = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, path, **kw):
        seen["fig"] = fig
        return real_savefig(fig, path, **kw)

    plt.Figure.savefig = capture
    try:
        report.plot(results, str(tmp_path / "p.png"), suite="cpu")
    finally:
        plt.Figure.savefig = real_savefig
    assert (tmp_path / "p.png").stat().st_size > 0
    ax = seen["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[labels.index("1x"):] == ["1x", "2x", "4x", "8x", "16x"]
    assert ax.get_title().startswith("fastrnn cpu suite: ") and "2 threads" in ax.get_title()
    colours = {p.get_label(): p.patches[0].get_facecolor() for p in ax.containers}
    assert matplotlib.colors.to_hex(colours["fastrnn-cpu"]) == report.COLOURS["fastrnn-cpu"]
    assert matplotlib.colors.to_hex(colours["torch-cpu"]) == report.COLOURS["torch-cpu"]
    assert len(set(map(tuple, colours.values()))) == 3
    assert report.colour("mine", ["mine", "yours"]) != report.colour("yours", ["mine",
                                                                               "yours"])


def test_onnx_runtime_times_inference_after_agreeing(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = bench.Config("tiny-infer", "gru", 5, 6, 2, 2, 3, 4, "infer")
    names = bench.contenders("cpu")
    assert "onnxruntime" in names
    (res,) = bench.run([cfg], names, rounds=1, reps=1, stream=open(os.devnull, "w"),
                       gap_s=0)
    assert res["contenders"]["onnxruntime"]["runs"] == 1


def test_openvino_times_inference_after_agreeing():
    """OpenVINO (an optional extra) runs the layer's ONNX export: it passes the agreement
    check with the reference on every cell family, then is timed; never on training."""
    pytest.importorskip("openvino")
    names = bench.contenders("cpu")
    assert "openvino" in names
    cfgs = [bench.Config(f"tiny-{cell}", cell, 5, 6, 1, 2, 3, 4, "infer")
            for cell in ("gru", "lstm", "rnn_tanh")]
    train = bench.Config("tiny-train", "lstm", 5, 6, 1, 1, 3, 4, "train")
    results = bench.run(cfgs + [train], ["fastrnn-numpy", "openvino"], rounds=1, reps=1,
                        stream=open(os.devnull, "w"), gap_s=0)
    for res in results[:3]:
        assert res["contenders"]["openvino"]["runs"] == 1
    assert "openvino" not in results[3]["contenders"]


def test_thread_sweeps_parse_and_refuse_bad_counts():
    assert bench.thread_counts(None) == [None]
    assert bench.thread_counts("2") == [2]
    assert bench.thread_counts("1,2,4") == [1, 2, 4]
    for bad in ("0", "1,,2", "a", "1, 2", "-1"):
        with pytest.raises(bench.BenchmarkError, match="--threads: expected a positive"):
            bench.thread_counts(bad)


def test_a_thread_sweep_reports_each_count(tmp_path):
    out = tmp_path / "sweep.md"
    cli.main(["bench", "--only", "C8", "--threads", "1,2", "--rounds", "1", "--reps", "1",
              "--backend", "cpu", "--no-peer", "--markdown", str(out)])
    text = out.read_text()
    assert "| C8 | gru I=128 H=128 L=1 D=1 B=8 T=500 infer | 1 | fastrnn-cpu |" in text
    assert "| C8 | gru I=128 H=128 L=1 D=1 B=8 T=500 infer | 2 | fastrnn-cpu |" in text


def test_quantized_contenders_infer_layers_with_their_errors():
    """fastrnn's int8 and bfloat16 layers, ONNX Runtime's and PyTorch's dynamic int8
    quantization: contenders of the inference configurations of whole layers only (torch's
    of LSTM and GRU), each checked against its own limit and reported with its error."""
    for name in bench.LOW_PRECISION_TOL:
        assert not bench.applies(name, bench.SUITES["cpu"]["C2"])  # training
        assert not bench.applies(name, bench.SUITES["cells"]["K5"])  # a loop of steps
    assert bench.applies("torch-int8", bench.SUITES["cpu"]["C8"])
    assert not bench.applies("torch-int8", bench.Config("r", "rnn_tanh", 4, 8, 1, 1, 2, 3,
                                                        "infer"))
    cfg = bench.Config("tiny-q", "lstm", 32, 32, 2, 1, 2, 6, "infer")
    names = bench.contenders("cpu")
    assert {"fastrnn-cpu-int8", "fastrnn-cpu-bf16"} <= set(names)
    assert names.index("torch-cpu") < names.index("torch-int8")  # (torch-cpu: the peer)
    results = bench.run([cfg], names, rounds=1, reps=1, stream=open(os.devnull, "w"),
                        gap_s=0)
    rows = results[0]["contenders"]
    assert results[0]["peer"] == "torch-cpu"
    for name in ("fastrnn-cpu-int8", "fastrnn-cpu-bf16", "torch-int8", "onnxruntime-int8"):
        assert 0 < rows[name]["error"] <= bench.LOW_PRECISION_TOL[name], name
    assert rows["fastrnn-cpu"]["error"] <= bench.CHECK_TOL
    assert "error" in report.table(results) and "| error |" in report.markdown(results)
    # a low-precision contender is held to its own limit, not float32's
    ref = {"output": np.ones(4)}
    bench.check_agreement(cfg, {bench.REFERENCE: ref, "fastrnn-cpu-int8": {
        "output": np.ones(4) * 1.01}})
    with pytest.raises(bench.BenchmarkError, match="fastrnn-cpu-bf16 disagrees"):
        bench.check_agreement(cfg, {bench.REFERENCE: ref, "fastrnn-cpu-bf16": {
            "output": np.ones(4) * 1.01}})
