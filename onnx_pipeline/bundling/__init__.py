"""What the bundle step shares with the builders: the data a bundle is built and judged on, fidelity, README."""
