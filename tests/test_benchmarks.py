"""The benchmark scripts: each one's ``--help`` prints and exits 0, and the interval and
verdict their tables give for a median over repeats (benchmarks/_machine.py).

Nothing is timed here (benchmarks/ measures speed; see benchmarks/README.md). argparse
formats help strings with ``%``, so a bare ``%`` in a help text ("as % of a peak") makes
``--help`` raise a TypeError; this test caught one such string.
"""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed():
    assert "train_step.py" in SCRIPTS and "sampler.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def _machine_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bench_machine", BENCHMARKS / "_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("m", [3, 5, 6, 7, 9, 11, 15, 20, 31])
def test_median_interval_is_the_sign_tests_order_statistics(m):
    """benchmarks/_machine.py's median interval (the paired ratios of sampler.py and
    train_step.py): [x_(k), x_(m+1-k)] with k the largest rank whose binomial tail sum_{i<k} C(m, i) / 2^m is at most 2.5% (counted here with
    math.comb, not scipy), and no finite interval where even k = 1 fails (m < 6)."""
    import math
    machine = _machine_module()
    values = [float(v) for v in range(m, 0, -1)]  # unsorted on purpose: x_(i) = i
    tails = [sum(math.comb(m, i) for i in range(k)) / 2**m for k in range(m + 1)]
    k = max((k for k in range(1, m // 2 + 1) if tails[k] <= 0.025), default=0)
    median, low, high = machine.median_interval(values)
    assert median == (m + 1) / 2
    if k == 0:
        assert (low, high) == (-math.inf, math.inf)
    else:
        assert (low, high) == (k, m + 1 - k)


def test_verdict():
    verdict = _machine_module().verdict
    assert verdict(1.0, 1.15, 1.15) == "met"
    assert verdict(1.16, 1.3, 1.15) == "missed"
    assert verdict(1.1, 1.2, 1.15) == "open"
    assert verdict(float("-inf"), float("inf"), 1.15) == "open"
    assert verdict(0.6, 0.7, 0.6, below=False) == "met"      # at least the target
    assert verdict(0.4, 0.59, 0.6, below=False) == "missed"
    assert verdict(0.5, 0.7, 0.6, below=False) == "open"
    assert verdict(1.15, 1.3, 1.15) == "open"                 # touching the target from above
    assert verdict(0.5, 0.6, 0.6, below=False) == "open"      # touching it from below


@pytest.mark.parametrize("values", [[], [1.0] * 8 + [float("nan")], [1.0] * 8 + [float("inf")]])
def test_median_interval_refuses_what_it_cannot_order(values):
    with pytest.raises(ValueError, match="finite"):
        _machine_module().median_interval(values)


def test_paired_cells():
    cells = _machine_module().paired_cells
    # 9 values: the interval is [x_(2), x_(8)]; a bound just above 1.15 is printed so as to show it
    assert cells([1.1, 1.12, 1.13, 1.14, 1.145, 1.146, 1.148, 1.15004, 1.2], 1.15) == \
        ("1.145 [1.1200, 1.15004]", "open")
    assert cells([1.1, 1.12, 1.13, 1.14, 1.145, 1.146, 1.148, 1.15, 1.2], 1.15) == \
        ("1.145 [1.1200, 1.1500]", "met")
    assert cells([1.0] * 9, 1.15) == ("1.000 [1.0000, 1.0000]", "met")
    assert cells([1.0, 1.1, 1.2], 1.15) == ("1.100 (no interval: 3 < 6 repeats)", "-")


def _train_step_module(monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports _machine as the benchmarks do
    spec = importlib.util.spec_from_file_location("_bench_train_step", BENCHMARKS / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_share_of_the_peak_is_paired_by_round(monkeypatch):
    """train_step.py's share of the peak: each round's step rate over the same round's product
    rate (not sorted, not one best-of peak); a target for every row it times."""
    module = _train_step_module(monkeypatch)
    # step flops 10, peak flops 20: round 0 5 / 20, round 1 10 / 20, round 2 2.5 / 10
    assert module.paired_shares([2.0, 1.0, 4.0], [1.0, 1.0, 2.0], 10.0, 20.0) == [0.25, 0.5, 0.25]
    with pytest.raises(ValueError, match="one peak time per round"):
        module.paired_shares([1.0, 2.0], [1.0], 10.0, 20.0)
    assert set(module.PEAK_TARGETS) == set(module.ROWS)


def test_train_step_splits_the_peak_out_of_the_rounds(monkeypatch):
    """measure()'s step from time_interleaved's output: the peak's run leaves the timed
    implementations, and round r's step meets round r's product."""
    module = _train_step_module(monkeypatch)
    size = module.PEAK_SIZE
    product = 2.0 * size**3
    # round by round: the step at 2, 1, 4 s; the product at 1e-9, 4e-9, 2e-9 x its flops
    times = {"sgm_ref": [2.0, 1.0, 4.0], "NumPy": [3.0, 3.0, 3.0], "peak": [1e-9 * product, 4e-9 * product,
                                                                           2e-9 * product]}
    out = module.split_peak(times, {"sgm_ref": 5, "NumPy": 4, "peak": 2}, 10.0)
    assert set(times) == {"sgm_ref", "NumPy"}  # no table lists the product as an implementation
    # share = (10 / step) / (1 / (unit x 1e-9)) = 10 x unit x 1e-9 / step: 5e-9, 4e-8, 5e-9
    np.testing.assert_allclose(out["paired_peak"], [5e-9, 4e-8, 5e-9], rtol=1e-12)
    k, slowest, fastest = out["peak_detail"]
    assert k == 2 and slowest == pytest.approx(0.25) and fastest == pytest.approx(1.0)
    assert module.split_peak({"sgm_ref": [1.0]}, {"sgm_ref": 1}, 10.0) == {}  # the product failed
    times = {"NumPy": [1.0], "peak": [1.0]}
    assert set(module.split_peak(times, {"NumPy": 1, "peak": 1}, 10.0)) == {"peak_detail"}  # sgm_ref failed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_step_equal_work_check_catches_a_peer_whose_timed_step_skips_work(monkeypatch, dtype):
    """The check runs each peer's timed update (its loss, gradient and Adam step) on the fixed
    batch: a jitted step that returned its parameters unchanged, or a torch step without its
    optimiser, passed it when only the loss and gradient were compared."""
    module = _train_step_module(monkeypatch)
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)  # as the benchmark runs JAX; put back below for the other tests
    try:
        _check_catches_skipped_work(module, monkeypatch, torch, jax, dtype)
    finally:
        jax.config.update("jax_enable_x64", before)


def _check_catches_skipped_work(module, monkeypatch, torch, jax, dtype):
    problem = module.make_problem(2, 16, 2, 64, np.dtype(dtype), 0)
    good = module.check_equal_work(problem, {"PyTorch": torch, "JAX": jax}, 0)
    assert all(v[0] <= v[1] for v in good.values()), good

    update = module._jax_update

    def no_adam(jax_, dtype_):
        real = update(jax_, dtype_)
        return lambda params, m, v, k, x0, t, z: (params,) + tuple(real(params, m, v, k, x0, t, z)[1:])

    monkeypatch.setattr(module, "_jax_update", no_adam)
    trainer = module._torch_trainer

    def no_step(torch_, problem_):
        net, linears, _ = trainer(torch_, problem_)

        def update_without_step(x0, t, z):
            loss = module._torch_loss(torch_, net, x0, t, z)
            loss.backward()
            return loss
        return net, linears, update_without_step

    monkeypatch.setattr(module, "_torch_trainer", no_step)
    bad = module.check_equal_work(problem, {"PyTorch": torch, "JAX": jax}, 0)
    for name in ("PyTorch", "JAX"):
        assert bad[name][0] > bad[name][1], (name, bad[name])


def test_train_step_rounds_run_in_random_orders(monkeypatch):
    """Each round runs every implementation once, in a fresh random order (seeded): with a
    rotation jax.jit always followed sgm_ref or the peak product."""
    module = _train_step_module(monkeypatch)
    seen = []
    runs = {name: (lambda k, name=name: seen.append(name)) for name in ("sgm_ref", "NumPy", "JAX", "peak")}
    args = type("Args", (), {"warmup": 1, "target": 1e-4, "repeats": 12})()
    monkeypatch.setattr(module, "calibrate", lambda run, target: 1)
    module.time_interleaved(dict(runs), args, {})
    rounds = [seen[4 + 4 * r:8 + 4 * r] for r in range(12)]  # after the 4 warm-ups
    assert all(sorted(r) == sorted(runs) for r in rounds)
    before_jax = {r[r.index("JAX") - 1] for r in rounds if r.index("JAX") > 0}
    assert len(before_jax) >= 2 and len({tuple(r) for r in rounds}) >= 6


_LOADED_AT_IMPORT = """
import runpy, sys
sys.path.insert(0, {bench!r})
sys.argv = [{script!r}] + {argv!r}
runpy.run_path({script!r}, run_name="not_main")  # the module's top level only, not main()
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("argv, torch_loaded", [
    (["--_memory-worker", "1,float32,NumPy"], False),
    (["--_memory-worker", "1,float32,sgm_ref"], False),
    (["--_sweep-worker", "1,float64", "--repeats", "1"], False),
    (["--skip-peers"], False),
    (["--rows", "1", "--skip-p"], False),   # argparse's abbreviation of --skip-peers
    (["--rows", "1"], True),
    (["--skip-jit-cost"], True),
])
def test_train_step_workers_do_not_load_torch(argv, torch_loaded):
    """The --memory workers report a fresh interpreter's peak per implementation, and the
    --thread-sweep workers time sgm_ref alone: torch, loaded at the top of the script for the
    timed run, put its ~180 MiB into every worker's peak (sgm_ref 353 MiB at (2, 128, 3, 256)
    float32 against 170 MiB without it). Only the timed run with peers loads it first."""
    pytest.importorskip("torch")
    script = str(BENCHMARKS / "train_step.py")
    code = _LOADED_AT_IMPORT.format(bench=str(BENCHMARKS), script=script, argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(torch_loaded)


def test_train_step_memory_workers_load_only_their_implementation(monkeypatch):
    """--memory reports each implementation's peak in a fresh interpreter, but every worker
    ran the script's own imports: the NumPy baseline's, PyTorch's and JAX's interpreters
    carried numba and sgm_ref (measured on the small row: 67-81 MiB of each peer's peak, `import numpy, torch`
    219 MiB against 301 with them, and a plain NumPy step's 127 MiB against 41). Their workers
    now load neither (the problem comes from the parent's file), and say what they loaded."""
    module = _train_step_module(monkeypatch)
    row = module.ROWS[0]
    got = module.measure_memory([row], ["float32"], ["NumPy"])[(row, "float32", "NumPy")]
    assert got["loaded"] == [] and got["peak"] > 0 and got["growth"] > 0, got
    # the peers' workers as far as their imports (torch and jax load inside memory_worker)
    script = str(BENCHMARKS / "train_step.py")
    for name in ("PyTorch", "JAX"):
        code = _LOADED_AT_IMPORT.replace('print("torch" in sys.modules)',
                                         'print("numba" in sys.modules, "sgm_ref" in sys.modules)')
        code = code.format(bench=str(BENCHMARKS), script=script, argv=["--_memory-worker", f"1,float32,{name}"])
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-2:] == ["False", "False"], (name, proc.stdout)


def _script_module(monkeypatch, name):
    import importlib.util
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rate_cost_interpolates_the_rest_in_log_d_and_log_n(monkeypatch):
    """rate_cost.py's prediction of a cell's rest: bilinear in (log d, log n) between the
    measured corners, computed here directly; with one d (--d 512) the corners' d values are
    the same and the old weight log(1) / log(1) made every predicted cell NaN."""
    import math
    rest_between = _script_module(monkeypatch, "rate_cost").rest_between
    corner = {(2, 500): 10.0, (2, 32000): 40.0, (512, 500): 100.0, (512, 32000): 700.0}
    for d, n in ((2, 500), (512, 32000), (32, 4000), (8, 1000)):
        u, v = math.log(d / 2) / math.log(256), math.log(n / 500) / math.log(64)
        want = (1 - u) * (1 - v) * 10.0 + (1 - u) * v * 40.0 + u * (1 - v) * 100.0 + u * v * 700.0
        assert rest_between(corner, d, n, (2, 512), (500, 32000)) == pytest.approx(want, rel=1e-14, abs=0)
    one_d = {(512, 500): 100.0, (512, 32000): 700.0}
    v = math.log(4000 / 500) / math.log(64)
    assert rest_between(one_d, 512, 4000, (512, 512), (500, 32000)) == pytest.approx(
        100.0 + v * 600.0, rel=1e-14, abs=0)
    assert rest_between({(512, 1000): 5.0}, 512, 1000, (512, 512), (1000, 1000)) == 5.0


def test_load_reads_a_running_process_cpu_time(monkeypatch):
    """load.py takes the busy loops' CPU time over the timed span from /proc/PID/stat while
    they run (counted at their wait, as before, it took in their start-up and the 0.3 s before
    the clock started, and the "others" column came out that much low): the reading of this
    process against os.times(), to the 10 ms ticks of both."""
    import os
    import time
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc")
    process_cpu_seconds = _script_module(monkeypatch, "load").process_cpu_seconds
    end = time.thread_time() + 0.2
    while time.thread_time() < end:  # some CPU time of our own
        pass
    before = os.times()
    got = process_cpu_seconds(os.getpid())
    after = os.times()
    assert before.user + before.system - 0.02 <= got <= after.user + after.system + 0.02
    assert got >= 0.2 - 0.02
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process


def test_other_load_counts_guest_time_once():
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice;
    guest time is already inside user (and guest_nice inside nice), so busy = user + nice +
    system + irq + softirq + steal, as train_step.py's LoadMeter counts it."""
    busy_ticks = _machine_module().OtherLoad.busy_ticks
    line = "cpu  1000 20 300 5000 40 6 7 80 900 10"
    assert busy_ticks(line) == 1000 + 20 + 300 + 6 + 7 + 80
    assert busy_ticks("cpu  1583574 42267 196546 1109319 4158 0 1219 5121 0 0") == \
        1583574 + 42267 + 196546 + 1219 + 5121
    if pathlib.Path("/proc/stat").exists():  # the machine's own line parses, and the meter reads it
        with open("/proc/stat") as f:
            assert busy_ticks(f.readline()) > 0
        with _machine_module().OtherLoad() as load:
            pass
        assert load.other is not None and load.other >= 0.0


_DEFAULTS_AT_IMPORT = """
import runpy, sys
sys.path.insert(0, {bench!r})
sys.argv = [{script!r}]
runpy.run_path({script!r}, run_name="not_main")
import os
from sgm_ref import _threads
before = _threads.environment_defaults()["loaded_before"]  # runtimes loaded before sgm_ref
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "an OpenMP runtime" in before)
"""


@pytest.mark.parametrize("script", ["likelihood.py", "train_step.py"])
def test_torch_keeps_its_own_openmp_defaults(script):
    """The scripts that time torch load it before sgm_ref, whose OMP_WAIT_POLICY=PASSIVE would
    otherwise reach torch's OpenMP runtime (its threads sleeping at once instead of spinning as
    torch's default has them), and set OPENBLAS_THREAD_TIMEOUT=4 before numpy loads, as sgm_ref
    does when imported first. likelihood.py imported torch inside main(), after sgm_ref."""
    import os
    pytest.importorskip("torch")
    path = str(BENCHMARKS / script)
    proc = subprocess.run([sys.executable, "-c", _DEFAULTS_AT_IMPORT.format(bench=str(BENCHMARKS), script=path)],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["4", "True"]


def test_other_load_counts_whole_ticks_and_says_so():
    """OtherLoad's CPU seconds are whole clock ticks (/proc/stat and os.times both count them),
    so over a block of a few ms one tick is cores of "load": resolution gives that tick in
    cores, which activation.py prints beside its load column (its small row's 41 pairs take
    ~4 ms: one tick read as 2.5 cores)."""
    import os
    import time
    if not pathlib.Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    with _machine_module().OtherLoad() as load:
        time.sleep(0.03)
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert load.resolution == pytest.approx(tick / load.wall, rel=1e-12)
    assert load.resolution > 0.1  # a 30 ms block cannot tell a tenth of a core
    ticks = load.other / tick
    assert ticks == pytest.approx(round(ticks), abs=1e-6)


_PROBE = "import json, sgm_ref; print(json.dumps({'__file__': sgm_ref.__file__, 'rows': 1}))"


def test_versions_refuses_a_tree_that_did_not_provide_sgm_ref(monkeypatch, tmp_path):
    """versions.py imports each tree through PYTHONPATH=TREE: a tree with no sgm_ref/ (a wrong
    --old, or the package folder itself) fell through to the installed sgm_ref, and the old and
    new columns timed the same code (new / old about 1, silently). run() now checks where the
    child's sgm_ref came from (CHILD replaced here by an import and nothing else)."""
    module = _script_module(monkeypatch, "versions")
    monkeypatch.setattr(module, "CHILD", _PROBE)
    with pytest.raises(SystemExit, match="not from this tree"):
        module.run(str(tmp_path))  # nothing to import here: the installed sgm_ref answered
    (tmp_path / "sgm_ref").mkdir()
    (tmp_path / "sgm_ref" / "__init__.py").write_text("")
    assert module.run(str(tmp_path)) == {"rows": 1}  # this tree's own package, its key taken out
    assert module.run(str(BENCHMARKS.parent)) == {"rows": 1}


def test_likelihood_check_compares_the_score_of_every_timed_call(monkeypatch):
    """likelihood.py's agreement check before timing: the Hutchinson calls return the score
    too (ScoreModel.jvp's first output), and a jvp whose score was off by a relative 1e-6
    passed, only the exact call's score being compared with torch's."""
    pytest.importorskip("torch")
    module = _script_module(monkeypatch, "likelihood")
    torch = module.torch
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as main() runs it
    try:
        good = module.measure("mlp", 2, 32, 1, torch, np.random.default_rng(0))
        assert good["ok"] and good["checks"]["score"] < 1e-14, good["checks"]
        real = module.ScoreModel.jvp

        def jvp_with_a_wrong_score(self, *args):
            s, jv = real(self, *args)
            return s * (1 + 1e-6), jv

        monkeypatch.setattr(module.ScoreModel, "jvp", jvp_with_a_wrong_score)
        bad = module.measure("mlp", 2, 32, 1, torch, np.random.default_rng(0))
        assert not bad["ok"] and bad["checks"]["score"] == pytest.approx(1e-6, rel=1e-3)
    finally:
        torch.set_default_dtype(before)


def test_activation_checks_h_and_its_derivative_before_timing(monkeypatch, capsys):
    """activation.py printed the fused pass's largest difference in h and timed it whatever
    it was, and never compared h' (D, what the backward pass multiplies by): a candidate
    whose h' was off by a relative 1e-9 was timed as the same work. It now exits first."""
    module = _script_module(monkeypatch, "activation")
    real = module.fused_silu

    def wrong_derivative(Z, H, D):
        real(Z, H, D)
        D *= 1 + 1e-9

    monkeypatch.setattr(module, "fused_silu", wrong_derivative)
    with pytest.raises(SystemExit, match=r"h' is off by 1e-09"):
        module.main(["--repeats", "6"])
    assert "| (2, 128, 3, 256) |" not in capsys.readouterr().out  # nothing timed


_ORACLE_THREADS = """
import runpy, sys
sys.path.insert(0, {bench!r})
module = runpy.run_path({script!r}, run_name="not_main")
print([line for line in module["thread_report"]() if "idle workers" in line][0])
"""


@pytest.mark.parametrize("start, who", [(None, "set by this script before numpy loaded"),
                                        ("6", "set before Python started")])
def test_oracle_says_who_set_the_openblas_timeout(start, who):
    """oracle.py sets OPENBLAS_THREAD_TIMEOUT=4 itself before numpy loads (unless set), so
    sgm_ref never does; its report said "set before Python started" for a run started
    without it, which RESULTS.md's readers take for a run with the variable in the shell."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if start is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = start
    code = _ORACLE_THREADS.format(bench=str(BENCHMARKS), script=str(BENCHMARKS / "oracle.py"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert f"OPENBLAS_THREAD_TIMEOUT={start or 4}, {who}" in line, line


def test_likelihood_check_tells_a_central_difference_from_a_forward_one(monkeypatch):
    """The oracle's Hutchinson estimate is a central difference (error O(h^2): 2e-9 of the
    estimate here); the check's old tolerance 1e-5 also passed a forward difference (O(h):
    7.7e-6 on this draw), so the timed call could have skipped a score call unnoticed."""
    pytest.importorskip("torch")
    module = _script_module(monkeypatch, "likelihood")
    torch = module.torch
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        good = module.measure("oracle", 2, 32, 1, torch, np.random.default_rng(10))
        assert good["ok"] and good["checks"]["hutchinson"] < 1e-8, good["checks"]

        def forward_difference(score, x, eps):
            h = 1e-5 * (1.0 + np.max(np.abs(x), axis=1, keepdims=True))
            return np.sum(eps * (score(x + h * eps) - score(x)) / h, axis=1)

        monkeypatch.setattr(module, "central_difference_probe", forward_difference)
        bad = module.measure("oracle", 2, 32, 1, torch, np.random.default_rng(10))
        assert 1e-6 < bad["checks"]["hutchinson"] < 1e-5 and not bad["ok"], bad["checks"]
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("script, argv, message", [
    ("sampler", ["--particles", "0"], "--particles must be >= 1, got 0"),
    ("sampler", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("sampler", ["--repeats", "-1"], "--repeats must be >= 1, got -1"),
    ("sampler", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("sampler", ["--train-steps", "0"], "--train-steps must be >= 1, got 0"),
    ("sampler", ["--dims", "2", "0"], "--dims must be >= 1"),
    ("likelihood", ["--n", "0"], "--n must be >= 1, got 0"),
    ("likelihood", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("likelihood", ["--repeats", "-1"], "--repeats must be >= 1, got -1"),
])
def test_counts_below_one_are_refused(monkeypatch, capsys, script, argv, message):
    """sampler.py and likelihood.py read `--particles 0`, `--repeats 0` and `--n 0` as not
    given (value or default) and ran the default silently; --repeats -1 ended in a
    ZeroDivisionError (likelihood.py) or an empty median's ValueError (sampler.py)."""
    module = _script_module(monkeypatch, script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py"] + argv)

    def nothing_is_measured(*args, **kwargs):
        raise AssertionError("the options were taken and the benchmark started")

    for name in ("measure", "fit"):  # should the check pass the options, nothing heavy runs
        if hasattr(module, name):
            monkeypatch.setattr(module, name, nothing_is_measured)
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _table_rows(lines):
    """The cells of each Markdown table row (a pipe escaped as \\| is text)."""
    return [[c.strip() for c in line.replace("\\|", "\u00a6").strip().strip("|").split("|")]
            for line in lines if line.startswith("|")]


@pytest.fixture(scope="module")
def float32_report():
    """benchmarks/sampler_float32.py's output (run once: about 10 s)."""
    import contextlib
    import importlib.util
    import io
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("_bench_sampler_float32", BENCHMARKS / "sampler_float32.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main([])
    finally:
        sys.path.remove(str(BENCHMARKS))
    return out.getvalue()


def test_sampler_float32_prints_the_pages_table(float32_report):
    """benchmarks/sampler_float32.py's table is docs/sampler_speed.md's "Loss of digits" table:
    every row with the header's 6 cells (the header's bare pipes of |y| split it into 8 cells
    over rows of 6), and each figure the page gives equal to the script's to the digits the
    page states (the script printed 1.5 and 1.2 where the page says 1.46 and 1.22)."""
    import math
    got = _table_rows(float32_report.splitlines())
    assert len(got) == 2 + 18 and all(len(row) == 6 for row in got), [len(row) for row in got]
    page = (BENCHMARKS.parent / "docs" / "sampler_speed.md").read_text(encoding="utf-8").splitlines()
    start = page.index(next(line for line in page if line.startswith("| process | method | N |")))
    want = _table_rows(page[start:start + 20])
    assert got[0] == want[0] and [r[:3] for r in got[2:]] == [r[:3] for r in want[2:]]
    for mine, theirs in zip(got[2:], want[2:]):
        for a, b in zip(mine[3:], theirs[3:]):
            mantissa = b.split("e")[0]
            decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
            exponent = int(b.split("e")[1]) if "e" in b else 0
            half_unit = 0.5 * 10.0 ** (exponent - decimals)
            assert math.isclose(float(a), float(b), rel_tol=0, abs_tol=half_unit * (1 + 1e-9)), (mine, theirs)


def test_sampler_float32_oracle_on_float32_points_gives_the_same_bits(float32_report):
    """docs/sampler_speed.md said that with the oracle itself run in float32 "the score's own
    rounding dominates (up to 1e-5 on a few points near the modes)": written before the oracle
    computed float32 points in float64 and rounded once. On the script's identity-covariance
    mixture the float32 oracle gives the table's float32 outputs bit for bit in all 18 runs
    (checked here by the script, and the page says so)."""
    out = float32_report
    assert "the float32 outputs of the table bit for bit in 18 of 18 runs" in out, out[-400:]
    page = " ".join((BENCHMARKS.parent / "docs" / "sampler_speed.md").read_text(encoding="utf-8").split())
    assert "gives the same outputs bit for bit in all 18 runs" in page
    assert "the score's own rounding dominates" not in page


def test_rate_cost_counts_the_held_out_evaluations_of_a_cell(monkeypatch):
    """rate_cost.py predicted a cell as its training steps (timed by a plain fit) plus the rest
    of a one-step cell, whose training makes 2 held-out evaluations (rate.HeldOut, val_n
    points each) where a cell of the full grid makes 24 (every stored row of
    docs/rate_iso_rerun): the other 22 were in no term. Counted here from the stored rows and
    from run_cell's own checkpoints on small cells."""
    import json
    from sgm_ref.experiments import rate
    module = _script_module(monkeypatch, "rate_cost")
    run = BENCHMARKS.parent / "docs" / "rate_iso_rerun"
    settings = json.loads((run / "sweep.json").read_text(encoding="utf-8"))["settings"]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("status") == "ok"]
    assert len(rows) == 420
    for r in rows:
        assert module.held_out_calls(r["steps"], settings) == len(r["val_steps"]) == 24, r["steps"]
    small = {**rate.SETTINGS, "width": 8, "n_eval": 200, "n_eval_empirical": 200, "val_n": 256, "bound_n": 8,
             "bound_steps": 10, "em_starts": 1}
    for steps in (1, 45):  # 45: every 2 steps, one early step (1), and the last (45)
        row = rate.run_cell({"family": "mixture-iso", "d": 2, "n": 500, "seed": 0,
                             "settings": {**small, "steps": steps}})
        assert row["status"] == "ok" and module.held_out_calls(steps, small) == len(row["val_steps"])
    assert module.held_out_calls(1, rate.SETTINGS) == 2
    # the prediction: 12000 steps at 5 ms, 22 more evaluations at 0.3 s, the rest at its corner
    corner = {(2, 500): 10.0, (2, 32000): 40.0, (512, 500): 100.0, (512, 32000): 700.0}
    got = module.cell_seconds(500, 2, rate.SETTINGS, {2: 0.005}, {2: 0.3}, corner, (2, 512), (500, 32000))
    assert got == pytest.approx(12000 * 0.005 + 22 * 0.3 + 10.0, rel=1e-14, abs=0)


def test_rate_cost_measures_each_corner_once(monkeypatch, capsys):
    """With one d (`--d 1024`) the corners (d, n_min) and (d, n_max) of each family were each
    run twice, d_ends being (1024, 1024): twice the cost of the slowest measurement, and the
    second run overwrote the first. Nothing is timed here: the measurements are stand-ins."""
    module = _script_module(monkeypatch, "rate_cost")
    calls = []

    def run_cell(cell):
        calls.append((cell["family"], cell["d"], cell["n"]))
        return {"eval_seconds": 1.0, "train_seconds": 0.5}

    monkeypatch.setattr(module.rate, "run_cell", run_cell)
    monkeypatch.setattr(module, "step_seconds", lambda d, S: 1e-3)
    monkeypatch.setattr(module, "held_out_seconds", lambda d, S, family: 0.1)
    monkeypatch.setattr(module, "set_threads", lambda n: None)
    for argv, d_values in ((["--d", "8"], [8]), (["--d", "8,2,8"], [2, 8])):
        calls.clear()
        monkeypatch.setattr(sys, "argv", ["rate_cost.py"] + argv)
        module.main()
        n_ends = (min(module.rate.FULL["n"]), max(module.rate.FULL["n"]))
        want = [(f, d, n) for f in module.rate.FULL["families"] for d in d_values for n in n_ends]
        assert calls == want
    out = capsys.readouterr().out
    # every cell: 1.5 s of rest, its steps at 1 ms, 22 more held-out evaluations at 0.1 s
    steps = module.rate.training_steps(500, module.rate.SETTINGS)
    assert f"| mixture-iso | 2 | {steps * 1e-3 + 2.2 + 1.5:.0f} |" in out


class _CountingNumPy:
    """numpy with matmul counted: each call's flops (2 m k n) and the output it was given."""

    def __init__(self):
        self.flops, self.outs = [], []

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, out=None):
        self.flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        self.outs.append(out)
        return np.matmul(a, b, out=out)


def test_train_step_flop_count_is_what_the_step_multiplies(monkeypatch):
    """step_flops, the GFLOP/s and "% of peak" columns' count, against the matrix products
    one sgm_ref step executes (every np.matmul of sgm_ref.nn.mlp counted as 2 m k n while
    TrainStep runs): the small row by hand, per layer (f_in -> f_out) 4 B (f_in + 1) f_out
    forward and dW, and 2 B f_in f_out dh past the input layer: 4 x 256 x (4 x 128 + 2 x 129
    x 128 + 129 x 2) + 2 x 256 x (2 x 128 x 128 + 128 x 2) = 51,513,344 (6 B n_params, the
    count before 2026-12-05, is 51,907,584)."""
    from sgm_ref.nn import mlp
    module = _train_step_module(monkeypatch)
    assert module.step_flops(module.layer_sizes(2, 128, 3), 256) == 51_513_344
    for row in ((2, 128, 3, 256), (3, 8, 2, 5), (1, 4, 1, 1)):
        problem = module.make_problem(*row, "float64", 0)
        _, step, rng = module.make_sgm_ref(problem, 0)
        step(rng)
        counting = _CountingNumPy()
        monkeypatch.setattr(mlp, "np", counting)
        step(rng)
        monkeypatch.setattr(mlp, "np", np)
        assert len(counting.flops) == 3 * (len(problem["sizes"]) - 1) - 1, row  # forward, dW; dh past layer 0
        assert sum(counting.flops) == module.step_flops(problem["sizes"], row[3]), row


def test_train_step_peak_writes_into_one_preallocated_output(monkeypatch):
    """The best-of peak before the rows ("% of peak", "floor ms") and --bound's timed `a @ b`
    into a fresh output per call: a float64 2048^2 one is 32 MiB of new pages each time (4.8
    ms to write against 1.1 ms reused, ~3% of the product), which the rounds' product
    (make_peak, out=) and the step's products (their workspace) never pay. Nothing is timed
    here: the product is 64^3."""
    module = _train_step_module(monkeypatch)
    monkeypatch.setattr(module, "PEAK_SIZE", 64)
    counting = _CountingNumPy()
    monkeypatch.setattr(module, "np", counting)
    peaks = module.measure_peaks(None, 3)
    assert set(peaks) == {("NumPy", "float64"), ("NumPy", "float32")} and min(peaks.values()) > 0
    assert counting.flops == [2 * 64**3] * 8  # per dtype: one untimed call, 3 timed
    for first in (0, 4):  # one output per dtype, the same in every call
        out = counting.outs[first]
        assert isinstance(out, np.ndarray) and out.shape == (64, 64)
        assert all(o is out for o in counting.outs[first:first + 4])
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(module, "np", np)
    assert min(module.measure_peaks(torch, 2).values()) > 0  # torch.matmul into its own out= too


def test_oracle_peak_writes_into_one_preallocated_output(monkeypatch):
    """oracle.py's matrix-product rate and the product of each round of its share of the
    peak: `A @ B` into a fresh output per call (for 2048^2 float64, 32 MiB of new pages each
    time, ~3% of the product) put the share of the peak that much high. Sizes here are tiny."""
    module = _script_module(monkeypatch, "oracle")
    counting = _CountingNumPy()
    monkeypatch.setattr(module, "np", counting)
    assert module.matmul_peak(32, 3) > 0
    assert counting.flops == [2 * 32**3] * 4
    assert all(isinstance(o, np.ndarray) and o is counting.outs[0] for o in counting.outs)
    counting.flops.clear(), counting.outs.clear()
    shares = module.peak_shares(4, 2, 64, 3, 32, np.random.default_rng(0))
    assert len(shares) == 3 and min(shares) > 0
    products = [o for o, f in zip(counting.outs, counting.flops) if f == 2 * 32**3]
    assert len(products) == 4 and all(isinstance(o, np.ndarray) and o is products[0] for o in products)


def test_train_step_omp_note_says_whose_libgomp_numba_runs_on(monkeypatch):
    """With torch loaded before sgm_ref (for torch's own defaults), numba's 'omp' layer binds
    to torch's libgomp, which read no wait policy: numba's idle threads spin (4.5 ms of CPU
    per parallel region against 0.01 with sgm_ref alone), while the report's environment line
    showed sgm_ref's OMP_WAIT_POLICY=PASSIVE and its note, keyed on the variable being unset,
    said nothing."""
    note = _train_step_module(monkeypatch).omp_note
    torch_first = {"set": {"OMP_WAIT_POLICY": "PASSIVE"}, "loaded_before": ["OpenBLAS (numpy)", "an OpenMP runtime"]}
    alone = {"set": {"OMP_WAIT_POLICY": "PASSIVE"}, "loaded_before": ["OpenBLAS (numpy)"]}
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "loaded before sgm_ref" in note("omp", torch_first, passive)
    assert "OMP_WAIT_POLICY=PASSIVE" in note("omp", torch_first, passive)
    assert note("omp", alone, passive) is None  # numba's own libgomp read PASSIVE
    assert note("workqueue", torch_first, passive) is None
    # set before Python started: every libgomp read it, sgm_ref set nothing
    assert note("omp", {"set": {}, "loaded_before": torch_first["loaded_before"]}, passive) is None
    assert "default wait policy" in note("omp", {"set": {}, "loaded_before": []}, {})


_THREAD_NOTE = """
import runpy, sys
sys.path.insert(0, {bench!r})
sys.argv = [{script!r}]
module = runpy.run_path({script!r}, run_name="not_main")
import numba
numba.get_num_threads()  # starts the threading layer, as the timed run's report finds it
print(numba.threading_layer(), any("loaded before sgm_ref" in line for line in module["thread_report"]({{}})))
"""


def test_train_step_reports_numba_on_torchs_libgomp():
    """The timed run as it starts (torch loaded first): its thread report carries the note."""
    import os
    pytest.importorskip("torch")
    script = str(BENCHMARKS / "train_step.py")
    proc = subprocess.run([sys.executable, "-c", _THREAD_NOTE.format(bench=str(BENCHMARKS), script=script)],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    layer, noted = proc.stdout.split()[-2:]
    assert noted == str(layer == "omp"), proc.stdout
