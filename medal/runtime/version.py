"""medal's version, on the ground floor so that every stage can record it without importing the package's face."""

__version__ = "0.1.0"
