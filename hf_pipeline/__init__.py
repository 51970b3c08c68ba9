"""hf_pipeline: the FineInstructions pipeline as versioned, Hub-native dataset stages."""

__version__ = "0.1.0"
