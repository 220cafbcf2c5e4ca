"""Many models on one dataset: ID vs OoD accuracy, effective robustness, NMI (`curate eval study`)."""
