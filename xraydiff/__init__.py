"""xraydiff core: data contract, readers, phantoms, heatmaps and the statistics built on them.

This package is framework-free: it depends on torch, numpy, scipy, scikit-image, SimpleITK,
albumentations and pgmpy, never on Lightning.
"""

__version__ = "0.1.0"
