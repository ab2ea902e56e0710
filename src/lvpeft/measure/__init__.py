"""Measuring what pruning costs and saves: `lvpeft flops` (`flops_command.py`, on the analytic count of
`lvpeft.tuner.flops`), `lvpeft bench` (`bench.py`, with `timing.py`, `bench_models.py` and `serve.py`), the
per-step profile (`breakdown.py`), and what it costs in answers: `lvpeft.evaluate` / `lvpeft eval`
(`evaluate.py`, `eval_command.py`). Sits on top of the method and of training; nothing below imports it."""
