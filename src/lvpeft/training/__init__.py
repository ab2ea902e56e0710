"""Training an LVPruning adapter: `LVPruningTrainer` (TRL's SFTTrainer with the ratio, distillation and
attention-ranking terms, `trainer.py`), `lvpeft train` (`train_command.py`) and LLaVA-format data
(`data/`). Sits on top of the method; nothing below imports it."""
