"""forge-train: training methods for LargeForge experts."""
