"""`lvpeft demo`: LVPruning end to end on the tiny LLaVA that lvpeft ships (`assets/`, `tiny_model.py`),
on the synthetic scenes task (`scenes.py`, `questions.py`): `pipeline.run_demo` runs the steps of
`training.py`, `evaluation.py` and `cost.py` with `settings.py`; `report.py` writes the tables and
`pictures.py` draws the pictures. Sits on top of everything else; nothing imports it."""
