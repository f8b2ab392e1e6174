# Makes the repository root importable in tests (stage scripts and lm2a/ live there).
