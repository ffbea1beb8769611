"""Ground floor: signals, the n-gram index, costs, stats, calibration, validation, atomic writes."""
