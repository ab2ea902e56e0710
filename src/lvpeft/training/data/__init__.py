"""LLaVA-format conversation data for training: `llava_format.load_llava_dataset` (the loader and its
schema) on `llava_rows.py` (reading and validating one row at a time), `validation.py` (validation
questions and their model inputs), and the chat template to train with: `chat_templates.py` (the one
helper, `training_chat_template`, used by `lvpeft train` and the demo) and `training_templates.py` (the
training template of each family)."""
