"""Landmarks: Gaussian heatmaps, localisation losses and decoding, shape models, error metrics."""
