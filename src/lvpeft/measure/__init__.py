"""Measuring what pruning costs and saves: `lvpeft flops` (`flops_command.py`, on the analytic count of
`lvpeft.tuner.flops`), `lvpeft bench` (`bench.py`, with `timing.py` and `bench_models.py`) and the
per-step profile (`breakdown.py`). Sits on top of the method; nothing below imports it."""
