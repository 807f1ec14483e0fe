"""The modelfleet trainer: the program a TrainingJob's pods run (``modelfleet train --config PATH``)."""
