"""`python -m pea_kd_bench` (make bench): run the benchmarks in turn; arguments go to the throughput benchmark.
The scale benchmark runs at 4k and 400k examples (`python -m pea_kd_bench.scale --examples N` for other sizes)."""
from . import scale
from .throughput import main

main()
scale.main(["--examples", "4000", "--examples", "400000"])
