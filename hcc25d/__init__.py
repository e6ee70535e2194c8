"""hcc25d: a reproducible implementation of a 2.5D multi-view, multi-phase CT deep-learning model with
multi-instance fusion for early recurrence of hepatocellular carcinoma after resection
(Zhang et al., J Hepatocell Carcinoma 2024)."""
__version__ = "0.1.0"
__all__ = ["__version__"]
