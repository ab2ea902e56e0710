"""Training an LVPruning adapter: `LVPruningTrainer` (TRL's SFTTrainer with the ratio, distillation and
attention-ranking terms, `trainer.py`), `lvpeft train` (`train_command.py`), LLaVA-format data
(`data/`) and validation while training (`answer_nll.py`, `eval_callback.py`). Sits on top of the
method; nothing below imports it."""
