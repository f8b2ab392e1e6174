# pytest puts this folder (the repository root) on sys.path, so tests import the stage scripts,
# lm2a/, models/ and sometest/ directly.


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
