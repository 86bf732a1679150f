"""Training and jump-and-retrain trajectories: seeded random projections of parameters, embeddings (PCA,
PHATE) and their persistent homology (Horoi et al. 2021)."""
