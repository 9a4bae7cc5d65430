"""The paper's study: sweeps over (t, alpha, seed) with claims, the report's tables, and the figures."""
