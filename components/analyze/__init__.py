"""analyze: challenger vs champion on the new data and the golden set, and the deploy decision."""
