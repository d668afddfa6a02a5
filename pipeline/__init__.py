"""housing-mlops: train, quantize, promote, serve and monitor a California Housing model on MLflow."""

__version__ = "0.1.0"
