"""``kubus bench``: kubus side by side with kube-controller-manager, on fresh dev stacks.

- :mod:`bench.compare.workload`: the Deployments (or the ceiling's pods), the two shapes,
  convergence checks and timestamp latencies (pure logic);
- :mod:`bench.compare.driver`: the phases' writes and polls against the apiserver;
- :mod:`bench.compare.contenders`: the processes each contender runs;
- :mod:`bench.compare.measure`: CPU, peak RSS and kubus's metrics per phase;
- :mod:`bench.compare.harness`: every contender on a fresh stack, one record per phase;
- :mod:`bench.compare.scaleup`: the scale-up after the contenders (bench/scale_up.py's
  measurement, one record);
- :mod:`bench.compare.report`: results.json, results.md and results.png;
- :mod:`bench.compare.cli`: the ``kubus bench`` flags.
"""
