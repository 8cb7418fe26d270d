"""`kubus bench` never loses a run: every figure it writes is strict JSON, and a latency past
the histogram's top bucket says so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.support import BucketBound, bucket_quantile
from kubus.cli import main


def test_a_quantile_past_the_top_bucket_is_above_that_bound_never_inf() -> None:
    # Cumulative counts: 10 of 100 within 0.5 s, 20 within 30 s, 80 past the top bucket.
    buckets = {0.5: 10.0, 30.0: 20.0, float("inf"): 100.0}
    assert bucket_quantile(buckets, 0.05) == BucketBound(0.5)
    assert bucket_quantile(buckets, 0.20) == BucketBound(30.0)
    p50 = bucket_quantile(buckets, 0.50)
    assert p50 == BucketBound(30.0, above=True)
    assert p50 is not None and str(p50) == "> 30" and p50.to_json() == {"above": 30.0}
    assert BucketBound.from_json(p50.to_json()) == p50
    assert bucket_quantile({0.5: 0.0, float("inf"): 0.0}, 0.5) is None
    # A histogram with no finite bucket tells only that the value is more than nothing.
    assert bucket_quantile({float("inf"): 3.0}, 0.5) == BucketBound(0.0, above=True)
    with pytest.raises(ValueError, match="finite"):
        BucketBound(float("inf"))


@pytest.mark.parametrize("flag", ["--deadline=inf", "--kube-api-qps=inf", "--deadline=nan"])
def test_a_non_finite_flag_is_refused_before_anything_runs(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", flag, f"--out={tmp_path}"])
    assert exit_.value.code == 2
    assert flag.partition("=")[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_json_dump_in_bench_refuses_nan_and_infinity() -> None:
    bench = Path(__file__).parents[2] / "bench"
    calls = []
    for source in sorted(bench.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
            ):
                strict = any(
                    k.arg == "allow_nan"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                calls.append((f"{source.relative_to(bench)}:{node.lineno}", strict))
    assert calls, "no json.dumps found: the check looks in the wrong place"
    assert [where for where, strict in calls if not strict] == []
