"""Files and formats: weight sources for every format, readers and writers, atomic outputs, safe mode."""
