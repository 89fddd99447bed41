"""The reference model: its config (`config.py`), its code (`gpt.py`), its trace points (`taps.py`)."""
