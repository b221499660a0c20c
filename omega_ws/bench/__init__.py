"""The benchmark: C{python -m omega_ws.bench}; see C{__main__}."""
